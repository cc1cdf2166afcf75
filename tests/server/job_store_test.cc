// JobStore contract, for every backend (in memory, SQLite): put/get/update, idempotency keys per owner,
// newest-first listing with state and owner filters, retention by count / bytes / age (events and keys go too),
// unfinished jobs, the result-cache index, events. SQLite only: everything survives reopening, identical specs
// share one row, a second process cannot open the same directory.
#include "server/job_store.h"

#include <google/protobuf/util/time_util.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/job_state.h"
#include "server/sqlite_db.h"
#include "server/sqlite_job_store.h"

namespace v1 = sinkscope::v1;
namespace fs = std::filesystem;
using sinkscope::server::InMemoryJobStore;
using sinkscope::server::JobQuery;
using sinkscope::server::JobRecord;
using sinkscope::server::JobStore;
using sinkscope::server::Retention;
using sinkscope::server::SqliteJobStore;

namespace {

JobRecord Rec(const std::string& id, const std::string& owner = "alice", const std::string& key = "") {
  JobRecord r;
  r.job.set_id(id);
  r.job.set_state(v1::JOB_STATE_QUEUED);
  r.job.mutable_spec()->add_models("m");
  r.request.add_models("m");
  r.owner = owner;
  r.idempotency_key = key;
  return r;
}

v1::JobEvent Ev(const std::string& id, uint64_t seq, double fraction = 0.5) {
  v1::JobEvent ev;
  ev.set_job_id(id);
  ev.set_seq(seq);
  ev.mutable_progress()->set_fraction(fraction);
  return ev;
}

v1::JobEvent FinishedEv(const std::string& id, uint64_t seq) {
  v1::JobEvent ev;
  ev.set_job_id(id);
  ev.set_seq(seq);
  ev.mutable_finished()->set_state(v1::JOB_STATE_CANCELLED);
  return ev;
}

Retention Keep(int64_t n) {
  Retention r;
  r.keep_finished = n;
  return r;
}

// QUEUED -> RUNNING -> `end`, through the one state-changing function.
void Finish(JobStore& s, const std::string& id, v1::JobState end = v1::JOB_STATE_SUCCEEDED) {
  for (v1::JobState to : {v1::JOB_STATE_RUNNING, end})
    ASSERT_TRUE(s.Update(id, [&](JobRecord& r) { return sinkscope::server::SetState(&r.job, to, absl::OkStatus()); }).ok());
}

std::vector<std::string> Ids(const std::vector<JobRecord>& records) {
  std::vector<std::string> ids;
  for (const auto& r : records) ids.push_back(r.job.id());
  return ids;
}
std::vector<std::string> Ids(const sinkscope::server::JobPage& page) { return Ids(page.records); }

class StoreTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fs::path(testing::TempDir()) / absl::StrCat("sinkscope-store-", getpid(), "-",
                                                       testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }
  // A new store over the same directory (SQLite), as after a restart; in memory: a fresh store only at SetUp.
  void Reopen() {
    if (GetParam() == "memory") {
      if (!store_) store_ = std::make_unique<InMemoryJobStore>();
      return;
    }
    store_.reset();
    auto s = SqliteJobStore::Open(dir_.string());
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  JobStore& s() { return *store_; }
  fs::path dir_;
  std::unique_ptr<JobStore> store_;
};

TEST_P(StoreTest, PutGetUpdate) {
  const uint64_t a = *s().Put(Rec("a"));
  EXPECT_GT(*s().Put(Rec("b")), a);  // submission order
  EXPECT_TRUE(absl::IsAlreadyExists(s().Put(Rec("a")).status()));
  JobRecord running = Rec("c");
  running.job.set_state(v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(absl::IsInvalidArgument(s().Put(running).status()));  // records start QUEUED
  EXPECT_EQ(s().Get("zz").status(), absl::NotFoundError("unknown job 'zz'"));
  ASSERT_GT(s().Get("b")->seq, a);
  EXPECT_EQ(s().Get("a")->request.models(0), "m");
  EXPECT_EQ(s().Get("a")->job.spec().models(0), "m");

  auto updated = s().Update("a", [](JobRecord& r) {
    r.job.set_progress(0.5);
    return absl::OkStatus();
  });
  ASSERT_TRUE(updated.ok());
  EXPECT_DOUBLE_EQ(updated->job.progress(), 0.5);
  // A failing update leaves the record as it was, even what fn changed before failing.
  auto failed = s().Update("a", [](JobRecord& r) {
    r.job.set_progress(0.9);
    return sinkscope::server::SetState(&r.job, v1::JOB_STATE_SUCCEEDED, absl::OkStatus());  // QUEUED -> SUCCEEDED
  });
  EXPECT_TRUE(absl::IsFailedPrecondition(failed.status()));
  EXPECT_DOUBLE_EQ(s().Get("a")->job.progress(), 0.5);
  EXPECT_EQ(s().Get("a")->job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(absl::IsNotFound(s().Update("zz", [](JobRecord&) { return absl::OkStatus(); }).status()));
}

TEST_P(StoreTest, IdempotencyKeysArePerOwner) {
  ASSERT_TRUE(s().Put(Rec("a", "alice", "k")).ok());
  EXPECT_EQ(*s().FindByKey("alice", "k"), "a");
  EXPECT_TRUE(absl::IsNotFound(s().FindByKey("bob", "k").status()));
  EXPECT_TRUE(absl::IsAlreadyExists(s().Put(Rec("a2", "alice", "k")).status()));
  EXPECT_TRUE(s().Put(Rec("b", "bob", "k")).ok());
  EXPECT_EQ(*s().FindByKey("bob", "k"), "b");
  EXPECT_TRUE(s().Put(Rec("c", "alice")).ok());  // no key: never deduplicated
  EXPECT_TRUE(s().Put(Rec("d", "alice")).ok());
  Reopen();
  EXPECT_EQ(*s().FindByKey("alice", "k"), "a");
  EXPECT_TRUE(absl::IsAlreadyExists(s().Put(Rec("a3", "alice", "k")).status()));
}

TEST_P(StoreTest, ListsNewestFirstWithFiltersAndPages) {
  for (const char* id : {"a", "b", "c", "d", "e"}) ASSERT_TRUE(s().Put(Rec(id, id[0] < 'c' ? "alice" : "bob")).ok());
  Finish(s(), "b", v1::JOB_STATE_CANCELLED);
  Finish(s(), "d", v1::JOB_STATE_CANCELLED);
  JobQuery q;
  q.limit = 2;
  auto p1 = s().List(q);
  EXPECT_EQ(Ids(p1), (std::vector<std::string>{"e", "d"}));
  EXPECT_TRUE(p1.more);
  q.offset = 4;
  auto last = s().List(q);
  EXPECT_EQ(Ids(last), std::vector<std::string>{"a"});
  EXPECT_FALSE(last.more);
  JobQuery cancelled;
  cancelled.states = {v1::JOB_STATE_CANCELLED};
  EXPECT_EQ(Ids(s().List(cancelled)), (std::vector<std::string>{"d", "b"}));
  JobQuery alice;
  alice.owner = "alice";
  EXPECT_EQ(Ids(s().List(alice)), (std::vector<std::string>{"b", "a"}));
  alice.states = {v1::JOB_STATE_QUEUED};
  EXPECT_EQ(Ids(s().List(alice)), std::vector<std::string>{"a"});
  // Unfinished: no Finished event yet, in submission order; b and d have their record final but not their log.
  EXPECT_EQ(Ids(s().Unfinished()), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  ASSERT_TRUE(s().AppendEvent(FinishedEv("b", 0)).ok());
  ASSERT_TRUE(s().AppendEvent(FinishedEv("d", 0)).ok());
  EXPECT_EQ(Ids(s().Unfinished()), (std::vector<std::string>{"a", "c", "e"}));
  Reopen();
  EXPECT_EQ(Ids(s().Unfinished()), (std::vector<std::string>{"a", "c", "e"}));
}

TEST_P(StoreTest, RetentionKeepsTheNewestFinishedJobsAndFreesTheirKeys) {
  ASSERT_TRUE(s().Put(Rec("f1", "alice", "k1")).ok());
  ASSERT_TRUE(s().Put(Rec("queued")).ok());
  ASSERT_TRUE(s().Put(Rec("f2")).ok());
  ASSERT_TRUE(s().Put(Rec("running")).ok());
  ASSERT_TRUE(s().Put(Rec("f3")).ok());
  for (const char* id : {"f3", "f1", "f2"}) Finish(s(), id);  // finishing order does not matter: submission does
  ASSERT_TRUE(s().Update("running", [](JobRecord& r) {
    return sinkscope::server::SetState(&r.job, v1::JOB_STATE_RUNNING, absl::OkStatus());
  }).ok());
  ASSERT_TRUE(s().SetCached("key-f1", "f1").ok());
  ASSERT_TRUE(s().AppendEvent(Ev("f1", 0)).ok());

  EXPECT_TRUE(s().ForgetFinished(Keep(3)).empty());
  EXPECT_EQ(s().ForgetFinished(Keep(2)), std::vector<std::string>{"f1"});
  EXPECT_TRUE(absl::IsNotFound(s().Get("f1").status()));
  EXPECT_TRUE(absl::IsNotFound(s().FindByKey("alice", "k1").status()));  // the key may be used again
  EXPECT_TRUE(absl::IsNotFound(s().FindCached("key-f1").status()));      // and the cache entry is gone
  if (s().durable()) {
    EXPECT_TRUE(absl::IsNotFound(s().LoadEvents("f1").status()));  // so are its events
  }
  EXPECT_TRUE(s().Put(Rec("f1-again", "alice", "k1")).ok());
  EXPECT_EQ(s().ForgetFinished(Keep(1)), std::vector<std::string>{"f2"});
  EXPECT_EQ(s().ForgetFinished(Keep(0)), std::vector<std::string>{"f3"});
  EXPECT_EQ(Ids(s().List({})), (std::vector<std::string>{"f1-again", "running", "queued"}));  // never unfinished ones
}

TEST_P(StoreTest, RetentionByBytesAndAge) {
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(s().Put(Rec(id)).ok());
    for (uint64_t i = 0; i < 20; ++i) ASSERT_TRUE(s().AppendEvent(Ev(id, i)).ok());
    Finish(s(), id);
  }
  Retention bytes;
  bytes.max_bytes = 1;  // smaller than any job: all finished jobs go, oldest first
  EXPECT_EQ(s().ForgetFinished(bytes), (std::vector<std::string>{"a", "b", "c"}));

  for (const char* id : {"old", "new"}) {
    ASSERT_TRUE(s().Put(Rec(id)).ok());
    Finish(s(), id);
  }
  ASSERT_TRUE(s().Update("old", [](JobRecord& r) {
    *r.job.mutable_finished_at() = google::protobuf::util::TimeUtil::SecondsToTimestamp(1000);  // 1970
    return absl::OkStatus();
  }).ok());
  Retention age;
  age.max_age_seconds = 3600;
  EXPECT_EQ(s().ForgetFinished(age), std::vector<std::string>{"old"});
  EXPECT_TRUE(s().ForgetFinished(age).empty());
  EXPECT_TRUE(s().Get("new").ok());
}

TEST_P(StoreTest, CacheIndexPointsAtTheNewestEntry) {
  ASSERT_TRUE(s().Put(Rec("a")).ok());
  ASSERT_TRUE(s().Put(Rec("b")).ok());
  EXPECT_TRUE(absl::IsNotFound(s().FindCached("k").status()));
  ASSERT_TRUE(s().SetCached("k", "a").ok());
  EXPECT_EQ(*s().FindCached("k"), "a");
  ASSERT_TRUE(s().SetCached("k", "b").ok());  // a no_cache run replaces the entry
  EXPECT_EQ(*s().FindCached("k"), "b");
  EXPECT_TRUE(absl::IsNotFound(s().SetCached("k", "zz")));
  Reopen();
  EXPECT_EQ(*s().FindCached("k"), "b");
}

TEST_P(StoreTest, EventsAreStoredInOrderAndSurviveReopening) {
  ASSERT_TRUE(s().Put(Rec("a")).ok());
  EXPECT_TRUE(absl::IsNotFound(s().AppendEvent(Ev("zz", 0))));
  for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(s().AppendEvent(Ev("a", i, 0.1 * static_cast<double>(i))).ok());
  if (!s().durable()) return;  // in memory the EventLog holds the events; the store only counts their bytes
  Reopen();
  EXPECT_EQ(*s().CountEvents("a"), 5u);
  auto evs = s().LoadEvents("a");
  ASSERT_TRUE(evs.ok()) << evs.status();
  ASSERT_EQ(evs->size(), 5u);
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ((*evs)[i].SerializeAsString(), Ev("a", i, 0.1 * static_cast<double>(i)).SerializeAsString());
  }
  EXPECT_TRUE(absl::IsNotFound(s().LoadEvents("zz").status()));
  EXPECT_FALSE(s().AppendEvent(Ev("a", 3)).ok());  // a seq is written once
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, testing::Values("memory", "sqlite"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(SqliteJobStore, RecordsSurviveReopeningByteForByteAndSpecsAreStoredOnce) {
  const fs::path dir = fs::path(testing::TempDir()) / absl::StrCat("sinkscope-sqlite-", getpid());
  fs::remove_all(dir);
  JobRecord done = Rec("done", "alice", "key");
  done.cache_key = "ck";
  done.request.mutable_inputs()->mutable_texts()->add_texts("Hello there.");
  {
    auto s = SqliteJobStore::Open(dir.string());
    ASSERT_TRUE(s.ok()) << s.status();
    // A second process (or a second store in this one) must not share the directory.
    auto second = SqliteJobStore::Open(dir.string());
    ASSERT_FALSE(second.ok());
    EXPECT_NE(second.status().message().find("in use by another sinkscoped"), std::string::npos) << second.status();
    ASSERT_TRUE((*s)->Put(done).ok());
    for (int i = 0; i < 50; ++i) ASSERT_TRUE((*s)->Put(Rec(absl::StrCat("same-", i))).ok());
    Finish(**s, "done");
    ASSERT_TRUE((*s)->AppendEvent(FinishedEv("done", 0)).ok());
    ASSERT_TRUE((*s)->Update("done", [](JobRecord& r) {
      r.job.mutable_summary()->set_inputs_digest("abc");
      r.job.mutable_summary()->add_models()->mutable_metrics()->insert({"sink_rate.mean", 0.25});
      return absl::OkStatus();
    }).ok());
    done = *(*s)->Get("done");
  }
  auto s = SqliteJobStore::Open(dir.string());
  ASSERT_TRUE(s.ok()) << s.status();
  const JobRecord again = *(*s)->Get("done");
  EXPECT_EQ(again.job.SerializeAsString(), done.job.SerializeAsString());
  EXPECT_EQ(again.request.SerializeAsString(), done.request.SerializeAsString());
  EXPECT_EQ(again.owner, "alice");
  EXPECT_EQ(again.idempotency_key, "key");
  EXPECT_EQ(again.cache_key, "ck");
  EXPECT_EQ(again.seq, done.seq);
  EXPECT_EQ(Ids((*s)->Unfinished()).size(), 50u);
  s->reset();
  // 51 jobs, 102 specs stored as 2 rows: {models: [m]} (every Job.spec and 50 identical requests) and done's request.
  auto db = sinkscope::server::SqliteDb::Open((dir / "jobs.db").string());
  ASSERT_TRUE(db.ok());
  sinkscope::server::SqliteDb::Query q(**db, "SELECT count(*) FROM specs");
  ASSERT_TRUE(q.Step());
  EXPECT_EQ(q.Int(0), 2);
  fs::remove_all(dir);
}

}  // namespace
