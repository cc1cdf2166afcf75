// EventLog: gap-free seq, replay then follow, late attach after the end, notify semantics, retention; with a
// store: stored before published, loaded after a restart, closed logs cached, shutdown ends waits.
#include "server/event_log.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"

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

// ---- with a store (the job store's EventStore side)

// Keeps events per job in a map; can be told to fail; counts loads.
class FakeStore : public sinkscope::server::EventStore {
 public:
  absl::Status AppendEvent(const v1::JobEvent& ev) override {
    if (fail) return absl::ResourceExhaustedError("disk full");
    auto it = jobs.find(ev.job_id());
    if (it == jobs.end()) return absl::NotFoundError("unknown job");
    EXPECT_EQ(ev.seq(), it->second.size());  // in order, gap-free
    it->second.push_back(ev);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<v1::JobEvent>> LoadEvents(const std::string& id) const override {
    ++loads;
    auto it = jobs.find(id);
    if (it == jobs.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
    return it->second;
  }
  absl::StatusOr<uint64_t> CountEvents(const std::string& id) const override {
    auto it = jobs.find(id);
    if (it == jobs.end()) return absl::NotFoundError("unknown job");
    return it->second.size();
  }
  bool durable() const override { return true; }

  std::map<std::string, std::vector<v1::JobEvent>> jobs;
  bool fail = false;
  mutable int loads = 0;
};

TEST(EventLogWithStore, EveryEventIsStoredBeforeItIsPublished) {
  FakeStore store;
  store.jobs["j"];
  EventLog log(&store);
  log.Open("j");
  ASSERT_TRUE(log.Append("j", Progress(0.1)).ok());
  store.fail = true;
  EXPECT_TRUE(absl::IsResourceExhausted(log.Append("j", Progress(0.2)).status()));
  store.fail = false;
  EXPECT_EQ(log.size("j"), 1u);  // the failed event was not published: memory and store keep one numbering
  ASSERT_EQ(*log.Append("j", Finished(), true), 1u);
  ASSERT_EQ(store.jobs["j"].size(), 2u);
  v1::JobEvent ev;
  ASSERT_EQ(*log.Next("j", 1, &ev, [] {}), Poll::kEvent);
  EXPECT_EQ(ev.SerializeAsString(), store.jobs["j"][1].SerializeAsString());
}

TEST(EventLogWithStore, AfterARestartLogsLoadFromTheStore) {
  FakeStore store;
  {
    store.jobs["done"];
    store.jobs["interrupted"];
    EventLog before(&store);
    before.Open("done");
    before.Open("interrupted");
    ASSERT_TRUE(before.Append("done", Progress(0.5)).ok());
    ASSERT_TRUE(before.Append("done", Finished(), true).ok());
    ASSERT_TRUE(before.Append("interrupted", Progress(0.5)).ok());
  }
  EventLog log(&store);  // a new process
  EXPECT_EQ(log.size("done"), 2u);  // counted in the store, not loaded
  EXPECT_EQ(store.loads, 0);
  v1::JobEvent ev;
  ASSERT_EQ(*log.Next("done", 1, &ev, [] {}), Poll::kEvent);
  EXPECT_TRUE(ev.has_finished());
  EXPECT_EQ(*log.Next("done", 2, &ev, [] {}), Poll::kEnd);  // loaded closed: it ends with Finished
  EXPECT_EQ(log.Events("done")->size(), 2u);
  EXPECT_EQ(store.loads, 1);
  // A job that was running continues its numbering; a watcher waits for it.
  int woken = 0;
  ASSERT_EQ(*log.Next("interrupted", 1, &ev, [&] { ++woken; }), Poll::kWait);
  EXPECT_TRUE(absl::IsFailedPrecondition(log.Events("interrupted").status()));
  ASSERT_EQ(*log.Append("interrupted", Progress(0.1)), 1u);
  EXPECT_EQ(woken, 1);
  EXPECT_EQ(store.jobs["interrupted"].size(), 2u);
  EXPECT_EQ(log.Next("never", 0, &ev, [] {}).status(), absl::NotFoundError("unknown job 'never'"));
}

TEST(EventLogWithStore, ClosedLogsAreACacheOfTheStore) {
  FakeStore store;
  EventLog log(&store, /*max_closed_in_memory=*/2);
  for (const char* id : {"a", "b", "c", "d"}) {
    store.jobs[id];
    log.Open(id);
    ASSERT_TRUE(log.Append(id, Finished(), true).ok());
  }
  const int loads = store.loads;
  v1::JobEvent ev;
  for (const char* id : {"a", "b", "c", "d"}) {
    ASSERT_EQ(*log.Next(id, 0, &ev, [] {}), Poll::kEvent) << id;
    EXPECT_EQ(ev.job_id(), id);
  }
  EXPECT_GE(store.loads, loads + 2);  // the oldest were dropped from memory and read back
}

TEST(EventLogWithStore, ShutdownEndsWaitsWithUnavailable) {
  FakeStore store;
  store.jobs["j"];
  EventLog log(&store);
  log.Open("j");
  ASSERT_TRUE(log.Append("j", Progress(0.1)).ok());
  v1::JobEvent ev;
  int woken = 0;
  ASSERT_EQ(*log.Next("j", 1, &ev, [&] { ++woken; }), Poll::kWait);
  log.Shutdown();
  EXPECT_EQ(woken, 1);
  ASSERT_EQ(*log.Next("j", 0, &ev, [] {}), Poll::kEvent);  // what exists still replays
  auto st = log.Next("j", 1, &ev, [] {});
  EXPECT_TRUE(absl::IsUnavailable(st.status())) << st.status();
  EXPECT_NE(st.status().message().find("re-attach from seq 1"), std::string::npos);
}

}  // namespace
