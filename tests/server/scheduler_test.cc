// Scheduler: priority then FIFO, one worker per device, cancellation (queued and running), deadlines, queue
// limit, drain, shutdown; and the job state machine (job_state.h) that records what the scheduler decides.
#include "server/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "server/job_state.h"

namespace v1 = sinkscope::v1;
using sinkscope::server::Scheduler;
using namespace std::chrono_literals;

namespace {

// Collects the scheduler's state reports; waits for a job's end (or interruption).
class Recorder {
 public:
  Scheduler::StateFn Fn() {
    return [this](const std::string& id, v1::JobState to, const absl::Status& why) {
      std::lock_guard<std::mutex> l(mu_);
      if (to == v1::JOB_STATE_RUNNING) started_.push_back(id);
      if (sinkscope::server::IsTerminal(to) || to == v1::JOB_STATE_INTERRUPTED) ends_[id] = {to, why};
      cv_.notify_all();
    };
  }
  // The end of `id` (UNSPECIFIED when it has not ended within 10 s).
  std::pair<v1::JobState, absl::Status> End(const std::string& id) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_for(l, 10s, [&] { return ends_.count(id) > 0; });
    auto it = ends_.find(id);
    return it == ends_.end() ? std::pair{v1::JOB_STATE_UNSPECIFIED, absl::UnknownError("no end")} : it->second;
  }
  bool Reported(const std::string& id) {
    std::lock_guard<std::mutex> l(mu_);
    return ends_.count(id) > 0;
  }
  bool WaitStarted(const std::string& id) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, 10s, [&] { return std::count(started_.begin(), started_.end(), id) > 0; });
  }
  std::vector<std::string> started() {
    std::lock_guard<std::mutex> l(mu_);
    return started_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> started_;
  std::map<std::string, std::pair<v1::JobState, absl::Status>> ends_;
};

Scheduler::Ticket T(const std::string& id, int32_t priority = 0, const std::string& device = "cpu") {
  Scheduler::Ticket t;
  t.id = id;
  t.priority = priority;
  t.device = device;
  return t;
}

absl::StatusOr<int32_t> Enqueue(Scheduler& s, Scheduler::Ticket t) {
  return s.Enqueue(std::move(t), [](int32_t) { return absl::OkStatus(); });
}

Scheduler::RunFn Succeed() {
  return [](const Scheduler::Ticket&, const sinkscope::job::CancelCheck&) { return absl::OkStatus(); };
}

// Runs until the cancel check fires (or 10 s), returning its status.
Scheduler::RunFn UntilCancelled() {
  return [](const Scheduler::Ticket&, const sinkscope::job::CancelCheck& cancel) {
    for (int i = 0; i < 10000; ++i) {
      if (absl::Status st = cancel(); !st.ok()) return st;
      std::this_thread::sleep_for(1ms);
    }
    return absl::InternalError("never cancelled");
  };
}

TEST(Scheduler, PriorityFirstThenFifo) {
  Recorder rec;
  Scheduler s(10, Succeed(), rec.Fn());
  s.SetPaused(true);
  EXPECT_EQ(*Enqueue(s, T("a", 0)), 0);
  EXPECT_EQ(*Enqueue(s, T("b", 5)), 0);
  EXPECT_EQ(*Enqueue(s, T("c", 0)), 2);
  EXPECT_EQ(*Enqueue(s, T("d", 5)), 1);
  EXPECT_EQ(s.QueuePosition("b"), 0);
  EXPECT_EQ(s.QueuePosition("d"), 1);
  EXPECT_EQ(s.QueuePosition("a"), 2);
  EXPECT_EQ(s.QueuePosition("c"), 3);
  EXPECT_EQ(s.QueuePosition("nope"), -1);
  EXPECT_EQ(s.queued(), 4);
  s.SetPaused(false);
  for (const char* id : {"a", "b", "c", "d"}) EXPECT_EQ(rec.End(id).first, v1::JOB_STATE_SUCCEEDED) << id;
  EXPECT_EQ(rec.started(), (std::vector<std::string>{"b", "d", "a", "c"}));
}

TEST(Scheduler, OneWorkerPerDevice) {
  std::mutex mu;
  std::condition_variable cv;
  int gpu_running = 0;
  std::atomic<int> cpu_running{0}, cpu_max{0};
  Recorder rec;
  Scheduler s(
      10,
      [&](const Scheduler::Ticket& t, const sinkscope::job::CancelCheck&) -> absl::Status {
        if (t.device == "cpu") {
          const int n = ++cpu_running;
          cpu_max = std::max(cpu_max.load(), n);
          std::this_thread::sleep_for(20ms);
          --cpu_running;
          return absl::OkStatus();
        }
        // Each GPU job waits until the other one runs too: only possible with one worker per device.
        std::unique_lock<std::mutex> l(mu);
        ++gpu_running;
        cv.notify_all();
        if (!cv.wait_for(l, 10s, [&] { return gpu_running == 2; })) return absl::InternalError("ran alone");
        return absl::OkStatus();
      },
      rec.Fn());
  ASSERT_TRUE(Enqueue(s, T("g0", 0, "cuda:0")).ok());
  ASSERT_TRUE(Enqueue(s, T("g1", 0, "cuda:1")).ok());
  ASSERT_TRUE(Enqueue(s, T("c0", 0, "cpu")).ok());
  ASSERT_TRUE(Enqueue(s, T("c1", 0, "cpu")).ok());
  for (const char* id : {"g0", "g1", "c0", "c1"})
    EXPECT_EQ(rec.End(id).first, v1::JOB_STATE_SUCCEEDED) << id << ": " << rec.End(id).second;
  EXPECT_EQ(cpu_max.load(), 1);  // CPU models share one worker
}

TEST(Scheduler, CancelQueuedAndRunning) {
  Recorder rec;
  Scheduler s(10, UntilCancelled(), rec.Fn());
  s.SetPaused(true);
  ASSERT_TRUE(Enqueue(s, T("queued")).ok());
  ASSERT_TRUE(s.Cancel("queued").ok());
  // Reported before Cancel returned, never run.
  auto [state, why] = rec.End("queued");
  EXPECT_EQ(state, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(why, absl::CancelledError("cancelled by client"));
  EXPECT_EQ(s.queued(), 0);

  s.SetPaused(false);
  ASSERT_TRUE(Enqueue(s, T("running")).ok());
  ASSERT_TRUE(rec.WaitStarted("running"));
  EXPECT_EQ(s.running(), 1);
  ASSERT_TRUE(s.Cancel("running").ok());
  EXPECT_EQ(rec.End("running").first, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(rec.End("running").second.code(), absl::StatusCode::kCancelled);
  for (int i = 0; i < 10000 && s.running() > 0; ++i) std::this_thread::sleep_for(1ms);  // worker lets go after the report
  EXPECT_TRUE(absl::IsNotFound(s.Cancel("running")));  // ended: nothing left to cancel
  EXPECT_EQ(rec.started(), std::vector<std::string>{"running"});
}

TEST(Scheduler, DeadlinesCancelQueuedAndRunningJobs) {
  Recorder rec;
  Scheduler s(10, UntilCancelled(), rec.Fn());
  s.SetPaused(true);
  Scheduler::Ticket late = T("late");
  late.deadline = Scheduler::Clock::now() + 1ms;
  ASSERT_TRUE(Enqueue(s, std::move(late)).ok());
  std::this_thread::sleep_for(5ms);
  s.SetPaused(false);
  EXPECT_EQ(rec.End("late").first, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(rec.End("late").second, absl::DeadlineExceededError("deadline passed while queued"));

  Scheduler::Ticket slow = T("slow");
  slow.deadline = Scheduler::Clock::now() + 100ms;
  ASSERT_TRUE(Enqueue(s, std::move(slow)).ok());
  EXPECT_EQ(rec.End("slow").first, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(rec.End("slow").second.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(rec.started(), std::vector<std::string>{"slow"});
}

TEST(Scheduler, FailureQueueLimitAndRejectedRecord) {
  Recorder rec;
  Scheduler s(
      2, [](const Scheduler::Ticket&, const sinkscope::job::CancelCheck&) { return absl::InternalError("boom"); },
      rec.Fn());
  s.SetPaused(true);
  ASSERT_TRUE(Enqueue(s, T("a")).ok());
  // on_queued failing (e.g. the store refused the record) un-queues the job.
  auto refused = s.Enqueue(T("x"), [](int32_t) { return absl::AlreadyExistsError("taken"); });
  EXPECT_TRUE(absl::IsAlreadyExists(refused.status()));
  EXPECT_EQ(s.queued(), 1);
  ASSERT_TRUE(Enqueue(s, T("b")).ok());
  auto full = Enqueue(s, T("c"));
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status(), absl::ResourceExhaustedError("queue full (2 jobs waiting, limit 2)"));
  s.SetPaused(false);
  EXPECT_EQ(rec.End("a").first, v1::JOB_STATE_FAILED);
  EXPECT_EQ(rec.End("a").second, absl::InternalError("boom"));
  EXPECT_EQ(rec.End("b").first, v1::JOB_STATE_FAILED);
}

TEST(Scheduler, DrainFinishesEverythingThenRefuses) {
  Recorder rec;
  Scheduler s(10, Succeed(), rec.Fn());
  s.SetPaused(true);
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(Enqueue(s, T(id)).ok());
  s.Drain();  // resumes the paused queue
  EXPECT_EQ(s.queued(), 0);
  EXPECT_EQ(s.running(), 0);
  for (const char* id : {"a", "b", "c"}) EXPECT_EQ(rec.End(id).first, v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(absl::IsUnavailable(Enqueue(s, T("d")).status()));
}

TEST(Scheduler, ShutdownCancelsQueuedAndRunning) {
  Recorder rec;
  Scheduler s(10, UntilCancelled(), rec.Fn());
  ASSERT_TRUE(Enqueue(s, T("running")).ok());
  ASSERT_TRUE(rec.WaitStarted("running"));
  ASSERT_TRUE(Enqueue(s, T("queued")).ok());
  s.Shutdown();
  EXPECT_EQ(rec.End("queued").first, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(rec.End("queued").second, absl::CancelledError("server shutting down"));
  EXPECT_EQ(rec.End("running").first, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(rec.End("running").second, absl::CancelledError("server shutting down"));
  EXPECT_TRUE(absl::IsUnavailable(Enqueue(s, T("late")).status()));
  s.Shutdown();  // idempotent
}

TEST(Scheduler, ShutdownKeepingJobsInterruptsRunningAndLeavesQueued) {
  Recorder rec;
  Scheduler s(1, UntilCancelled(), rec.Fn());
  ASSERT_TRUE(Enqueue(s, T("running")).ok());
  ASSERT_TRUE(rec.WaitStarted("running"));
  ASSERT_TRUE(Enqueue(s, T("queued")).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(Enqueue(s, T("over")).status()));
  Scheduler::Ticket recovered = T("recovered");
  recovered.admitted = true;  // accepted before a restart: over the limit is fine
  EXPECT_TRUE(Enqueue(s, std::move(recovered)).ok());
  s.Shutdown(Scheduler::StopMode::kKeep);
  EXPECT_EQ(rec.End("running").first, v1::JOB_STATE_INTERRUPTED);
  EXPECT_TRUE(absl::IsUnavailable(rec.End("running").second));
  EXPECT_FALSE(rec.Reported("queued"));  // no report: the store keeps it QUEUED for the next start
  EXPECT_EQ(rec.started(), std::vector<std::string>{"running"});
}

TEST(JobState, OnlyTheLifecycleArrowsAreAllowed) {
  using sinkscope::server::SetState;
  const v1::JobState kAll[] = {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED,
                               v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED, v1::JOB_STATE_INTERRUPTED};
  int allowed = 0;
  for (v1::JobState from : kAll)
    for (v1::JobState to : kAll) {
      v1::Job job;
      job.set_state(from);
      job.set_queue_position(3);
      const v1::Job before = job;
      const absl::Status st = SetState(&job, to, absl::OkStatus());
      const bool legal =
          (from == v1::JOB_STATE_QUEUED && (to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_CANCELLED)) ||
          (from == v1::JOB_STATE_RUNNING && (sinkscope::server::IsTerminal(to) || to == v1::JOB_STATE_INTERRUPTED)) ||
          (from == v1::JOB_STATE_INTERRUPTED && (to == v1::JOB_STATE_QUEUED || to == v1::JOB_STATE_FAILED));
      EXPECT_EQ(st.ok(), legal) << v1::JobState_Name(from) << " -> " << v1::JobState_Name(to);
      if (legal) {
        ++allowed;
        EXPECT_EQ(job.state(), to);
        EXPECT_EQ(job.queue_position(), -1);
      } else {
        EXPECT_TRUE(absl::IsFailedPrecondition(st));
        EXPECT_EQ(job.SerializeAsString(), before.SerializeAsString());  // untouched
      }
    }
  EXPECT_EQ(allowed, 8);
  EXPECT_FALSE(sinkscope::server::IsTerminal(v1::JOB_STATE_INTERRUPTED));
}

TEST(JobState, InterruptedThenQueuedStartsOver) {
  using sinkscope::server::SetState;
  v1::Job job;
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_progress(0.4);
  ASSERT_TRUE(SetState(&job, v1::JOB_STATE_INTERRUPTED, absl::AbortedError("server stopped")).ok());
  EXPECT_FALSE(job.has_finished_at());  // not an end
  EXPECT_EQ(job.error().message(), "server stopped");
  ASSERT_TRUE(SetState(&job, v1::JOB_STATE_QUEUED, absl::OkStatus()).ok());
  EXPECT_DOUBLE_EQ(job.progress(), 0.0);
  EXPECT_FALSE(job.has_error());
  EXPECT_FALSE(SetState(&job, v1::JOB_STATE_INTERRUPTED, absl::OkStatus()).ok());  // only a running job
  v1::Job failed;
  failed.set_state(v1::JOB_STATE_INTERRUPTED);
  ASSERT_TRUE(SetState(&failed, v1::JOB_STATE_FAILED, absl::AbortedError("interrupted by a restart")).ok());
  EXPECT_TRUE(failed.has_finished_at());
  EXPECT_EQ(failed.error().code(), static_cast<int>(absl::StatusCode::kAborted));
}

TEST(JobState, StampsTimesProgressAndError) {
  using sinkscope::server::SetState;
  v1::Job job;
  job.set_state(v1::JOB_STATE_QUEUED);
  ASSERT_TRUE(SetState(&job, v1::JOB_STATE_RUNNING, absl::OkStatus()).ok());
  EXPECT_TRUE(job.has_started_at());
  EXPECT_FALSE(job.has_finished_at());
  ASSERT_TRUE(SetState(&job, v1::JOB_STATE_SUCCEEDED, absl::OkStatus()).ok());
  EXPECT_TRUE(job.has_finished_at());
  EXPECT_DOUBLE_EQ(job.progress(), 1.0);
  EXPECT_FALSE(job.has_error());

  v1::Job failed;
  failed.set_state(v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(SetState(&failed, v1::JOB_STATE_FAILED, absl::InternalError("engine error: x")).ok());
  EXPECT_EQ(failed.error().code(), static_cast<int>(absl::StatusCode::kInternal));
  EXPECT_EQ(failed.error().message(), "engine error: x");
  EXPECT_DOUBLE_EQ(failed.progress(), 0.0);
}

}  // namespace
