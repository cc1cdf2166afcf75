// Scheduler: which planned job runs when, and where.
//
// One queue and one worker thread per device ("cpu", "cuda:0", ...): a job waits on the worker of its first
// model's device, so jobs on two GPUs run at once while CPU jobs share one worker (they would only fight over the
// same cores). Within a device: priority descending, then submission order (FIFO). A job past its deadline is
// cancelled when its worker reaches it (queued) or at the next cancel check (running). Pause holds every queue;
// Drain waits for the queues to empty; Shutdown cancels everything, or (kKeep, a durable job store) leaves queued
// jobs to the next start and stops the running ones as INTERRUPTED, then joins the workers.
//
// The scheduler decides state changes and reports them through StateFn; the caller records them (SetState in
// job_state.h). Of the API it knows only the JobState enum, of the engine only the plan it hands back to RunFn.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/plan.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;

  struct Ticket {
    std::string id;
    std::string device;  // worker key
    int32_t priority = 0;
    Clock::time_point deadline = Clock::time_point::max();
    std::shared_ptr<const job::Plan> plan;  // kept while the job waits or runs, released when it ends
    bool admitted = false;                  // accepted before a restart: the queue limit does not apply again
  };

  enum class StopMode {
    kCancel,  // queued and running jobs end CANCELLED ("server shutting down")
    kKeep,    // queued jobs are left alone (the store keeps them QUEUED); running ones stop as INTERRUPTED
  };

  // Runs a job on its device's worker thread. `cancel` turns non-OK (Cancelled, DeadlineExceeded) when the job
  // should stop. The status decides the end: OK → SUCCEEDED, Cancelled/DeadlineExceeded → CANCELLED, else FAILED.
  using RunFn = std::function<absl::Status(const Ticket& job, const job::CancelCheck& cancel)>;
  // Reports a state change, once it is decided, on the thread that decided it and without the scheduler's lock:
  // QUEUED→RUNNING, RUNNING→end and RUNNING→INTERRUPTED (Shutdown(kKeep)) on the worker; QUEUED→CANCELLED on the
  // thread of Cancel or Shutdown, or on the worker for a queued job past its deadline. `why` is OK or the reason
  // for FAILED / CANCELLED / INTERRUPTED.
  using StateFn = std::function<void(const std::string& id, sinkscope::v1::JobState to, const absl::Status& why)>;

  Scheduler(int32_t max_queued, RunFn run, StateFn on_state);
  ~Scheduler();  // Shutdown()

  // Queues `job`; returns its queue position (0 = next on its device). `on_queued(position)` runs under the
  // scheduler's lock before any worker can take the job, so what it records (the job, its Accepted event) comes
  // before anything the worker reports; an error from it un-queues the job and is returned. ResourceExhausted when
  // max_queued jobs already wait (all devices together), unless the ticket was `admitted` before; Unavailable
  // once Drain or Shutdown has begun.
  absl::StatusOr<int32_t> Enqueue(Ticket job, const std::function<absl::Status(int32_t position)>& on_queued);

  // A queued job is removed and reported CANCELLED ("cancelled by client") before this returns; a running one is
  // asked to stop at its next cancel check. NotFound when the scheduler does not hold the job (it has ended).
  absl::Status Cancel(const std::string& id);

  int32_t QueuePosition(const std::string& id) const;  // jobs ahead of it on its device; -1 when not queued
  int32_t queued() const;
  int32_t running() const;

  // Paused: queued jobs stay queued (Enqueue still accepts) until resumed.
  void SetPaused(bool paused);
  bool paused() const;
  // Refuses new jobs, resumes a paused scheduler and returns once every queued and running job has ended.
  void Drain();
  // Refuses new jobs; kCancel cancels queued ones ("server shutting down") and running ones, kKeep drops queued
  // ones without a report and stops running ones with Unavailable, reported INTERRUPTED. Joins the workers.
  // Idempotent.
  void Shutdown(StopMode mode = StopMode::kCancel);

 private:
  struct Waiting {
    Ticket ticket;
    uint64_t order = 0;  // FIFO within a priority
  };
  struct Running {
    Ticket ticket;
    std::atomic<bool> cancel{false};
    absl::Status reason;     // written once, before `cancel` is set
    bool interrupt = false;  // set with `reason` by Shutdown(kKeep): the job is to run again after the restart
  };
  struct Device {
    std::vector<Waiting> queue;
    std::shared_ptr<Running> running;
    std::thread worker;
  };

  void WorkerLoop(const std::string& device);
  void RunOne(const std::shared_ptr<Running>& job);
  // Requires mu_.
  int32_t PositionLocked(const Device& d, const Waiting& w) const;
  int32_t QueuedLocked() const;

  const int32_t max_queued_;
  const RunFn run_;
  const StateFn on_state_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Device> devices_;
  uint64_t next_order_ = 0;
  bool paused_ = false;
  bool accepting_ = true;
  bool stopping_ = false;
};

}  // namespace sinkscope::server
