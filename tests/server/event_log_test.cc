// EventLog: gap-free seq, replay then follow, late attach after the end, notify semantics, retention.
#include "server/event_log.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace v1 = sinkscope::v1;
using sinkscope::server::EventLog;
using Poll = EventLog::Poll;

namespace {

v1::JobEvent Progress(double f) {
  v1::JobEvent ev;
  ev.mutable_progress()->set_fraction(f);
  return ev;
}

v1::JobEvent Finished() {
  v1::JobEvent ev;
  ev.mutable_finished()->set_state(v1::JOB_STATE_SUCCEEDED);
  return ev;
}

TEST(EventLog, StampsGapFreeSeqJobIdAndTime) {
  EventLog log;
  log.Open("j");
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(*log.Append("j", Progress(0.1 * i)), i);
  EXPECT_EQ(log.size("j"), 3u);
  for (uint64_t i = 0; i < 3; ++i) {
    v1::JobEvent ev;
    ASSERT_EQ(*log.Next("j", i, &ev, [] {}), Poll::kEvent);
    EXPECT_EQ(ev.seq(), i);
    EXPECT_EQ(ev.job_id(), "j");
    EXPECT_TRUE(ev.has_time());
    EXPECT_DOUBLE_EQ(ev.progress().fraction(), 0.1 * i);
  }
}

TEST(EventLog, ReplayThenFollowThenEnd) {
  EventLog log;
  log.Open("j");
  ASSERT_TRUE(log.Append("j", Progress(0.5)).ok());
  v1::JobEvent ev;
  ASSERT_EQ(*log.Next("j", 0, &ev, [] {}), Poll::kEvent);  // replay
  int notified = 0;
  ASSERT_EQ(*log.Next("j", 1, &ev, [&] { ++notified; }), Poll::kWait);
  EXPECT_EQ(notified, 0);
  ASSERT_TRUE(log.Append("j", Progress(0.9)).ok());
  EXPECT_EQ(notified, 1);  // woken by the next event
  ASSERT_TRUE(log.Append("j", Finished(), /*last=*/true).ok());
  EXPECT_EQ(notified, 1);  // once only
  ASSERT_EQ(*log.Next("j", 1, &ev, [] {}), Poll::kEvent);
  EXPECT_DOUBLE_EQ(ev.progress().fraction(), 0.9);
  ASSERT_EQ(*log.Next("j", 2, &ev, [] {}), Poll::kEvent);
  EXPECT_TRUE(ev.has_finished());
  EXPECT_EQ(*log.Next("j", 3, &ev, [] {}), Poll::kEnd);
  EXPECT_TRUE(absl::IsFailedPrecondition(log.Append("j", Progress(1)).status()));  // nothing after Finished
}

TEST(EventLog, LateAttachReplaysEverythingFromAnySeq) {
  EventLog log;
  log.Open("j");
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(log.Append("j", Progress(i)).ok());
  ASSERT_TRUE(log.Append("j", Finished(), true).ok());
  for (uint64_t from : {0u, 2u, 5u, 9u}) {
    std::vector<uint64_t> seen;
    v1::JobEvent ev;
    for (uint64_t seq = from;; ++seq) {
      absl::StatusOr<Poll> p = log.Next("j", seq, &ev, [] { FAIL() << "a closed log never waits"; });
      ASSERT_TRUE(p.ok());
      if (*p == Poll::kEnd) break;
      ASSERT_EQ(*p, Poll::kEvent);
      seen.push_back(ev.seq());
    }
    EXPECT_EQ(seen.size(), from < 5 ? 5 - from : 0) << from;
    for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], from + i);
  }
}

TEST(EventLog, FollowerSeesEveryEventOfAConcurrentWriterInOrder) {
  EventLog log;
  log.Open("j");
  constexpr int kEvents = 500;
  std::thread writer([&] {
    for (int i = 0; i < kEvents; ++i) ASSERT_TRUE(log.Append("j", Progress(i)).ok());
    ASSERT_TRUE(log.Append("j", Finished(), true).ok());
  });
  std::mutex mu;
  std::condition_variable cv;
  bool woken = false;
  std::vector<uint64_t> seqs;
  for (uint64_t seq = 0;;) {
    v1::JobEvent ev;
    absl::StatusOr<Poll> p = log.Next("j", seq, &ev, [&] {
      // Called without the log's lock: calling back into the log here must not deadlock.
      log.size("j");
      std::lock_guard<std::mutex> l(mu);
      woken = true;
      cv.notify_all();
    });
    ASSERT_TRUE(p.ok());
    if (*p == Poll::kEnd) break;
    if (*p == Poll::kEvent) {
      seqs.push_back(ev.seq());
      ++seq;
      continue;
    }
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(10), [&] { return woken; }));
    woken = false;
  }
  writer.join();
  ASSERT_EQ(seqs.size(), kEvents + 1u);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], i);
}

TEST(EventLog, UnknownAndDroppedJobsAreNotFound) {
  EventLog log;
  v1::JobEvent ev;
  EXPECT_EQ(log.Next("nope", 0, &ev, [] {}).status(), absl::NotFoundError("unknown job 'nope'"));
  EXPECT_TRUE(absl::IsNotFound(log.Append("nope", Progress(0)).status()));
  EXPECT_EQ(log.size("nope"), 0u);
  log.Open("j");
  ASSERT_TRUE(log.Append("j", Finished(), true).ok());
  log.Drop("j");
  EXPECT_TRUE(absl::IsNotFound(log.Next("j", 0, &ev, [] {}).status()));
  EXPECT_EQ(log.size("j"), 0u);
}

}  // namespace
