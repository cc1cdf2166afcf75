// Durable jobs (--state_dir), in process: a restart serves finished jobs byte for byte (record, events, listing,
// idempotency keys); a graceful restart keeps queued jobs and re-queues the interrupted one (or fails it, as
// configured); a job whose model is gone fails with the reason; retention survives restarts; the owner filter.
// The crash (kill -9) case runs the real binary: crash_recovery_test.cc.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <thread>

#include "server/job_state.h"
#include "server/sqlite_job_store.h"
#include "tests/server/state_fixture.h"

namespace v1 = sinkscope::v1;
using sinkscope::testing_util::Canon;
using sinkscope::testing_util::CountStarted;
using sinkscope::testing_util::StateTest;

namespace {

TEST_F(StateTest, FinishedJobsAreServedByteForByteAfterARestart) {
  Start();
  auto a = Submit(QuickJob(), "key-a");
  ASSERT_TRUE(a.ok()) << a.status();
  const auto evs = Stream(*a);
  ASSERT_EQ(evs.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  v1::JobSpec failing = QuickJob("tiny-nope");
  failing.set_deadline_seconds(1e-6);  // ends CANCELLED (deadline) with an error in its record
  auto b = Submit(failing);
  ASSERT_TRUE(b.ok());
  const auto evs_b = Stream(*b);
  const v1::Job job_a = Get(*a), job_b = Get(*b);
  const v1::ListJobsResponse listed = List();

  Restart();
  EXPECT_EQ(Canon(Get(*a)), Canon(job_a));
  EXPECT_EQ(Canon(Get(*b)), Canon(job_b));
  EXPECT_TRUE(Get(*a).summary().models_size() == 1 && job_a.num_events() == evs.size());
  EXPECT_EQ(Canon(Stream(*a)), Canon(evs));
  EXPECT_EQ(Canon(Stream(*b)), Canon(evs_b));
  const auto tail = Stream(*a, 3);  // replay from any seq
  EXPECT_EQ(Canon(tail), Canon(std::vector<v1::JobEvent>(evs.begin() + 3, evs.end())));
  EXPECT_EQ(Canon(List()), Canon(listed));
  EXPECT_EQ(*Submit(QuickJob(), "key-a"), *a);  // the idempotency key still answers with the first job
  grpc::Status st;
  Get("j-0000000000000000", &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(StateTest, GracefulRestartKeepsQueuedJobsAndRequeuesTheRunningOne) {
  Start();
  auto slow = Submit(SlowJob());
  ASSERT_TRUE(slow.ok()) << slow.status();
  ASSERT_TRUE(WaitRunning(*slow));
  auto q1 = Submit(QuickJob());
  auto q2 = Submit(QuickJob("tiny-nope"), "key-q2");
  ASSERT_TRUE(q1.ok() && q2.ok());
  // A watcher of the running job: its stream ends UNAVAILABLE at shutdown (the job is not over), at once.
  // Shut down only once the watcher is attached (has read 3 events): a stream still being set up would be
  // cancelled by gRPC itself.
  std::vector<v1::JobEvent> before;
  grpc::Status watch_status;
  std::atomic<size_t> read{0};
  std::thread watcher([&] { before = Stream(*slow, 0, &watch_status, &read); });
  EXPECT_TRUE(sinkscope::testing_util::WaitFor([&] { return read >= 3; }));  // no ASSERT: join the watcher
  const auto t0 = std::chrono::steady_clock::now();
  server_->Shutdown(30.0);
  watcher.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 20.0);
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::UNAVAILABLE) << watch_status.error_message();
  EXPECT_EQ(server_->jobs().Get(*slow)->state(), v1::JOB_STATE_INTERRUPTED);
  EXPECT_EQ(server_->jobs().Get(*q1)->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(server_->jobs().Get(*q2)->state(), v1::JOB_STATE_QUEUED);

  Restart();
  const auto after = Stream(*slow);
  ASSERT_EQ(after.back().finished().state(), v1::JOB_STATE_SUCCEEDED) << after.back().finished().error().message();
  // The interrupted run's events stay (a watcher that saw them re-attaches where it was); the new run follows,
  // from its own Started.
  ASSERT_GE(after.size(), before.size());
  EXPECT_EQ(Canon(std::vector<v1::JobEvent>(after.begin(), after.begin() + before.size())), Canon(before));
  EXPECT_EQ(CountStarted(after), 2);
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i].seq(), i);
  EXPECT_EQ(Get(*slow).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Stream(*q1).back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Stream(*q2).back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(*Submit(QuickJob("tiny-nope"), "key-q2"), *q2);
}

TEST_F(StateTest, InterruptedJobsFailWhenTheConfigSaysSo) {
  Start();
  auto slow = Submit(SlowJob());
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(WaitRunning(*slow));
  server_->Shutdown(5.0);
  auto cfg = Config();
  cfg.state.requeue_interrupted = false;
  Restart(cfg);
  const auto evs = Stream(*slow);
  ASSERT_TRUE(evs.back().has_finished());
  EXPECT_EQ(evs.back().finished().state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(evs.back().finished().error().code(), static_cast<int>(grpc::StatusCode::ABORTED));
  EXPECT_NE(evs.back().finished().error().message().find("interrupted by a server restart"), std::string::npos);
  EXPECT_EQ(CountStarted(evs), 1);
  const v1::Job j = Get(*slow);
  EXPECT_EQ(j.state(), v1::JOB_STATE_FAILED);
  EXPECT_TRUE(j.has_finished_at());
}

TEST_F(StateTest, JobsWhoseModelIsGoneFailWithTheReason) {
  Start();
  server_->jobs().SetPaused(true);
  auto q = Submit(QuickJob("tiny-nope"));
  auto ok = Submit(QuickJob("tiny-rope"));
  ASSERT_TRUE(q.ok() && ok.ok());
  server_->Shutdown(5.0);
  auto cfg = Config();
  cfg.models.pop_back();  // tiny-nope is no longer configured
  Restart(cfg);
  const auto evs = Stream(*q);
  ASSERT_TRUE(evs.back().has_finished());
  EXPECT_EQ(evs.back().finished().state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(evs.back().finished().error().code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(evs.back().finished().error().message(), "cannot run after the server restart: unknown model 'tiny-nope'");
  EXPECT_EQ(Stream(*ok).back().finished().state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(StateTest, RetentionForgetsOldJobsWithTheirEventsAndKeys) {
  auto cfg = Config();
  cfg.state.keep_finished = 2;
  Start(cfg);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(*Submit(QuickJob(), absl::StrCat("key-", i)));
    Stream(ids.back());
  }
  grpc::Status st;
  Get(ids[0], &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  Restart(cfg);
  EXPECT_EQ(List().jobs_size(), 2);
  Stream(ids[0], 0, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Stream(ids[1]).back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_NE(*Submit(QuickJob(), "key-0"), ids[0]);  // a forgotten job's key is free again
}

TEST_F(StateTest, ListJobsFiltersByOwner) {
  Start();
  server_->jobs().SetPaused(true);
  v1::SubmitJobRequest req;
  *req.mutable_spec() = QuickJob();
  const std::string a = server_->jobs().Submit(req, "alice")->job_id();
  const std::string b = server_->jobs().Submit(req, "bob")->job_id();
  v1::ListJobsRequest list;
  auto alice = server_->jobs().List(list, "alice");
  ASSERT_TRUE(alice.ok());
  ASSERT_EQ(alice->jobs_size(), 1);
  EXPECT_EQ(alice->jobs(0).id(), a);
  EXPECT_EQ(alice->jobs(0).submitted_by(), "alice");
  EXPECT_EQ(server_->jobs().List(list)->jobs_size(), 2);  // empty owner: everyone's
  // The same key from two owners: two jobs.
  req.set_idempotency_key("k");
  EXPECT_NE(server_->jobs().Submit(req, "alice")->job_id(), server_->jobs().Submit(req, "bob")->job_id());
  EXPECT_NE(a, b);
}

// A crash between a job's final record and its Finished event: the next start appends the event, so that a
// watcher does not wait forever for a job that is over.
TEST_F(StateTest, AFinishedJobMissingItsFinishedEventGetsIt) {
  {
    auto store = sinkscope::server::SqliteJobStore::Open(state_dir_.string());
    ASSERT_TRUE(store.ok()) << store.status();
    sinkscope::server::JobRecord r;
    r.job.set_id("j-crashed");
    r.job.set_state(v1::JOB_STATE_QUEUED);
    ASSERT_TRUE((*store)->Put(r).ok());
    v1::JobEvent accepted;
    accepted.set_job_id("j-crashed");
    accepted.mutable_accepted();
    ASSERT_TRUE((*store)->AppendEvent(accepted).ok());
    for (auto [to, why] : {std::pair{v1::JOB_STATE_RUNNING, absl::OkStatus()},
                           std::pair{v1::JOB_STATE_FAILED, absl::InternalError("engine error: boom")}})
      ASSERT_TRUE((*store)->Update("j-crashed", [&](sinkscope::server::JobRecord& rec) {
        return sinkscope::server::SetState(&rec.job, to, why);
      }).ok());
  }
  Start();
  const auto evs = Stream("j-crashed");
  ASSERT_EQ(evs.size(), 2u);
  EXPECT_EQ(evs[1].finished().state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(evs[1].finished().error().message(), "engine error: boom");
}

}  // namespace
