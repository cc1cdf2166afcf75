// Result cache: a repeated job is answered from the store (same numbers, marked cached, fast); scheduler fields
// do not matter; a different spec misses; no_cache runs and refreshes the entry; the cache survives a restart;
// a model loaded without a weights digest is never cached.
#include <gtest/gtest.h>

#include <chrono>

#include "tests/server/state_fixture.h"

namespace v1 = sinkscope::v1;
using sinkscope::testing_util::StateTest;

namespace {

// An event with what the log stamps (job id, seq, time) and the cache's marks cleared: what must be equal.
std::string Payload(v1::JobEvent ev) {
  ev.clear_job_id();
  ev.clear_seq();
  ev.clear_time();
  if (ev.has_summary()) {
    ev.mutable_summary()->clear_cached();
    ev.mutable_summary()->clear_cached_from();
  }
  if (ev.has_accepted()) ev.mutable_accepted()->clear_queue_position();
  return sinkscope::testing_util::Canon(ev);
}

const v1::Summary& SummaryOf(const std::vector<v1::JobEvent>& evs) {
  for (const auto& e : evs)
    if (e.has_summary()) return e.summary();
  static const v1::Summary none;
  return none;
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST_F(StateTest, RepeatedJobIsAnsweredFromTheCache) {
  Start();
  const v1::JobSpec spec = SlowJob(60);
  auto t0 = std::chrono::steady_clock::now();
  auto first = Submit(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  const auto evs = Stream(*first);
  const double run_s = Seconds(t0);
  ASSERT_EQ(evs.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(SummaryOf(evs).cached());

  // Priority, label and deadline are the scheduler's: still the same results.
  v1::JobSpec again = spec;
  again.set_priority(3);
  again.set_label("second");
  t0 = std::chrono::steady_clock::now();
  auto second = Submit(again);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Get(*second).state(), v1::JOB_STATE_SUCCEEDED);  // answered before SubmitJob returned
  const auto cached = Stream(*second);
  const double cached_s = Seconds(t0);
  std::printf("[ result cache ] job run %.3f s, answered from the cache %.3f s (%zu events)\n", run_s, cached_s,
              cached.size());
  EXPECT_LT(cached_s, run_s);
  ASSERT_EQ(cached.size(), evs.size());
  for (size_t i = 0; i < evs.size(); ++i) {
    EXPECT_EQ(Payload(cached[i]), Payload(evs[i])) << i;
    EXPECT_EQ(cached[i].job_id(), *second);
    EXPECT_EQ(cached[i].seq(), i);
  }
  EXPECT_TRUE(SummaryOf(cached).cached());
  EXPECT_EQ(SummaryOf(cached).cached_from(), *first);
  const v1::Job job = Get(*second);
  EXPECT_TRUE(job.summary().cached());
  EXPECT_EQ(job.summary().cached_from(), *first);
  EXPECT_EQ(job.spec().label(), "second");
  EXPECT_EQ(job.num_events(), evs.size());

  // A different analysis setting is a different job.
  v1::JobSpec other = spec;
  other.mutable_analyses(0)->mutable_sink_rate()->set_tau(0.5);
  auto miss = Submit(other);
  ASSERT_TRUE(miss.ok());
  EXPECT_FALSE(SummaryOf(Stream(*miss)).cached());
  // Different inputs too.
  auto miss2 = Submit(SlowJob(61));
  ASSERT_TRUE(miss2.ok());
  EXPECT_FALSE(SummaryOf(Stream(*miss2)).cached());

  // no_cache runs, and its result becomes the entry.
  v1::JobSpec fresh = spec;
  fresh.set_no_cache(true);
  auto refreshed = Submit(fresh);
  ASSERT_TRUE(refreshed.ok());
  const auto fresh_evs = Stream(*refreshed);
  EXPECT_FALSE(SummaryOf(fresh_evs).cached());
  EXPECT_EQ(sinkscope::testing_util::CountStarted(fresh_evs), 1);
  EXPECT_TRUE(Get(*refreshed).spec().no_cache());
  auto third = Submit(spec);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(SummaryOf(Stream(*third)).cached_from(), *refreshed);

  // The cache survives a restart.
  Restart();
  auto fourth = Submit(spec);
  ASSERT_TRUE(fourth.ok());
  const auto after = Stream(*fourth);
  EXPECT_TRUE(SummaryOf(after).cached());
  EXPECT_EQ(SummaryOf(after).cached_from(), *refreshed);
  for (const auto& m : SummaryOf(after).models())
    for (const auto& [metric, value] : m.metrics())
      EXPECT_EQ(value, SummaryOf(evs).models(0).metrics().at(metric)) << metric;  // the same numbers
}

TEST_F(StateTest, ModelsWithoutAWeightsDigestAreNeverCached) {
  auto cfg = Config();
  cfg.models[0].digest = false;  // tiny-rope
  Start(cfg, /*durable=*/false);  // the cache works in memory as well
  for (int i = 0; i < 2; ++i) {
    auto id = Submit(QuickJob("tiny-rope"));
    ASSERT_TRUE(id.ok());
    EXPECT_FALSE(SummaryOf(Stream(*id)).cached()) << i;
  }
  auto a = Submit(QuickJob("tiny-nope"));
  ASSERT_TRUE(a.ok());
  Stream(*a);
  auto b = Submit(QuickJob("tiny-nope"));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(SummaryOf(Stream(*b)).cached_from(), *a);
}

}  // namespace
