// InMemoryJobStore: put/get/update, idempotency keys per owner, newest-first listing, retention of finished jobs.
#include "server/job_store.h"

#include <gtest/gtest.h>

#include "server/job_state.h"

namespace v1 = sinkscope::v1;
using sinkscope::server::InMemoryJobStore;
using sinkscope::server::JobQuery;
using sinkscope::server::JobRecord;

namespace {

JobRecord Rec(const std::string& id, const std::string& owner = "alice", const std::string& key = "") {
  JobRecord r;
  r.job.set_id(id);
  r.job.set_state(v1::JOB_STATE_QUEUED);
  r.owner = owner;
  r.idempotency_key = key;
  return r;
}

// QUEUED -> RUNNING -> `end`, through the one state-changing function.
void Finish(InMemoryJobStore& s, const std::string& id, v1::JobState end = v1::JOB_STATE_SUCCEEDED) {
  for (v1::JobState to : {v1::JOB_STATE_RUNNING, end})
    ASSERT_TRUE(s.Update(id, [&](JobRecord& r) { return sinkscope::server::SetState(&r.job, to, absl::OkStatus()); }).ok());
}

std::vector<std::string> Ids(const sinkscope::server::JobPage& page) {
  std::vector<std::string> ids;
  for (const auto& r : page.records) ids.push_back(r.job.id());
  return ids;
}

TEST(InMemoryJobStore, PutGetUpdate) {
  InMemoryJobStore s;
  EXPECT_EQ(*s.Put(Rec("a")), 0u);
  EXPECT_EQ(*s.Put(Rec("b")), 1u);
  EXPECT_TRUE(absl::IsAlreadyExists(s.Put(Rec("a")).status()));
  JobRecord running = Rec("c");
  running.job.set_state(v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(absl::IsInvalidArgument(s.Put(running).status()));  // records start QUEUED
  EXPECT_EQ(s.Get("zz").status(), absl::NotFoundError("unknown job 'zz'"));
  ASSERT_EQ(s.Get("b")->seq, 1u);

  auto updated = s.Update("a", [](JobRecord& r) {
    r.job.set_progress(0.5);
    return absl::OkStatus();
  });
  ASSERT_TRUE(updated.ok());
  EXPECT_DOUBLE_EQ(updated->job.progress(), 0.5);
  // A failing update leaves the record as it was, even what fn changed before failing.
  auto failed = s.Update("a", [](JobRecord& r) {
    r.job.set_progress(0.9);
    return sinkscope::server::SetState(&r.job, v1::JOB_STATE_SUCCEEDED, absl::OkStatus());  // QUEUED -> SUCCEEDED
  });
  EXPECT_TRUE(absl::IsFailedPrecondition(failed.status()));
  EXPECT_DOUBLE_EQ(s.Get("a")->job.progress(), 0.5);
  EXPECT_EQ(s.Get("a")->job.state(), v1::JOB_STATE_QUEUED);
}

TEST(InMemoryJobStore, IdempotencyKeysArePerOwner) {
  InMemoryJobStore s;
  ASSERT_TRUE(s.Put(Rec("a", "alice", "k")).ok());
  EXPECT_EQ(*s.FindByKey("alice", "k"), "a");
  EXPECT_TRUE(absl::IsNotFound(s.FindByKey("bob", "k").status()));
  EXPECT_TRUE(absl::IsAlreadyExists(s.Put(Rec("a2", "alice", "k")).status()));
  EXPECT_TRUE(s.Put(Rec("b", "bob", "k")).ok());
  EXPECT_EQ(*s.FindByKey("bob", "k"), "b");
  EXPECT_TRUE(s.Put(Rec("c", "alice")).ok());  // no key: never deduplicated
  EXPECT_TRUE(s.Put(Rec("d", "alice")).ok());
}

TEST(InMemoryJobStore, ListsNewestFirstWithFiltersAndPages) {
  InMemoryJobStore s;
  for (const char* id : {"a", "b", "c", "d", "e"}) ASSERT_TRUE(s.Put(Rec(id)).ok());
  Finish(s, "b", v1::JOB_STATE_CANCELLED);
  Finish(s, "d", v1::JOB_STATE_CANCELLED);
  JobQuery q;
  q.limit = 2;
  auto p1 = s.List(q);
  EXPECT_EQ(Ids(p1), (std::vector<std::string>{"e", "d"}));
  EXPECT_TRUE(p1.more);
  q.offset = 4;
  auto last = s.List(q);
  EXPECT_EQ(Ids(last), std::vector<std::string>{"a"});
  EXPECT_FALSE(last.more);
  JobQuery cancelled;
  cancelled.states = {v1::JOB_STATE_CANCELLED};
  EXPECT_EQ(Ids(s.List(cancelled)), (std::vector<std::string>{"d", "b"}));
}

TEST(InMemoryJobStore, RetentionKeepsTheNewestFinishedJobsAndFreesTheirKeys) {
  InMemoryJobStore s;
  ASSERT_TRUE(s.Put(Rec("f1", "alice", "k1")).ok());
  ASSERT_TRUE(s.Put(Rec("queued")).ok());
  ASSERT_TRUE(s.Put(Rec("f2")).ok());
  ASSERT_TRUE(s.Put(Rec("running")).ok());
  ASSERT_TRUE(s.Put(Rec("f3")).ok());
  for (const char* id : {"f3", "f1", "f2"}) Finish(s, id);  // finishing order does not matter: submission does
  ASSERT_TRUE(s.Update("running", [](JobRecord& r) {
    return sinkscope::server::SetState(&r.job, v1::JOB_STATE_RUNNING, absl::OkStatus());
  }).ok());

  EXPECT_TRUE(s.ForgetFinished(3).empty());
  EXPECT_EQ(s.ForgetFinished(2), std::vector<std::string>{"f1"});
  EXPECT_TRUE(absl::IsNotFound(s.Get("f1").status()));
  EXPECT_TRUE(absl::IsNotFound(s.FindByKey("alice", "k1").status()));  // the key may be used again
  EXPECT_TRUE(s.Put(Rec("f1-again", "alice", "k1")).ok());
  EXPECT_EQ(s.ForgetFinished(0), (std::vector<std::string>{"f2", "f3"}));
  EXPECT_EQ(Ids(s.List({})), (std::vector<std::string>{"f1-again", "running", "queued"}));  // never unfinished ones
}

}  // namespace
