// Job manager: the jobs side of the service, composed of
//   convert    (request -> engine spec; engine events -> JobEvents)
//   job::BuildPlan / job::Execute (the engine: validate and plan once at submission, run on a worker)
//   Scheduler  (queues, per-device workers, cancellation, deadlines)
//   JobStore   (job records, idempotency keys, retention)
//   EventLog   (every job's events, replay then follow)
// It records every state change the scheduler decides (SetState in job_state.h) and keeps the metrics.
// Thread-safe; Submit/Get/List/Cancel run on gRPC threads and never run the engine's forward passes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/job/plan.h"
#include "server/event_log.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "server/scheduler.h"
#include "sinkscope/v1/service.pb.h"

namespace sinkscope::server {

class JobManager {
 public:
  struct Options {
    int32_t max_queued_jobs = 64;
    int32_t max_finished_jobs = 1000;  // older finished jobs (and their events) are forgotten beyond this
    job::RunLimits limits;
    std::string server_version;
    Metrics* metrics = nullptr;  // optional
  };

  // `store` defaults to an InMemoryJobStore.
  JobManager(Options opts, const Registry* registry, std::unique_ptr<JobStore> store = nullptr);
  ~JobManager();  // Shutdown()

  // Rejects new jobs, cancels queued and running ones (their streams end with Finished{CANCELLED}), joins workers.
  void Shutdown();

  // Converts, validates and plans the job (errors name the field), then queues it. A repeated idempotency key
  // from the same principal returns the first job.
  absl::StatusOr<sinkscope::v1::SubmitJobResponse> Submit(const sinkscope::v1::SubmitJobRequest& req,
                                                           const std::string& principal);
  absl::StatusOr<sinkscope::v1::Job> Get(const std::string& id) const;
  absl::StatusOr<sinkscope::v1::ListJobsResponse> List(const sinkscope::v1::ListJobsRequest& req) const;
  // The state after the request: CANCELLED, or the end a job had already reached.
  absl::StatusOr<sinkscope::v1::JobState> Cancel(const std::string& id);

  EventLog& events() { return events_; }

  // Paused: queued jobs stay queued (submissions still accepted) until resumed. For maintenance and tests.
  void SetPaused(bool paused) { scheduler_.SetPaused(paused); }
  bool paused() const { return scheduler_.paused(); }
  int32_t queued() const { return scheduler_.queued(); }
  int32_t running() const { return scheduler_.running(); }

 private:
  // Scheduler callbacks: run a plan (worker thread); record a state change.
  absl::Status Run(const Scheduler::Ticket& t, const job::CancelCheck& cancel);
  void OnState(const std::string& id, sinkscope::v1::JobState to, const absl::Status& why);
  // Appends an engine event to the job's log; progress and the summary also go into its record.
  void Emit(const std::string& id, sinkscope::v1::JobEvent ev);
  // The API view of a record: live queue position and event count added.
  sinkscope::v1::Job View(JobRecord r) const;
  absl::StatusOr<sinkscope::v1::SubmitJobResponse> Existing(const std::string& id) const;

  const Options opts_;
  const Registry* registry_;
  std::unique_ptr<JobStore> store_;
  EventLog events_;
  Scheduler scheduler_;  // last: its workers use the members above until Shutdown joins them
};

}  // namespace sinkscope::server
