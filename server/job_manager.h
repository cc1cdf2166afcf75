// Job manager: the jobs side of the service, composed of
//   convert    (request -> engine spec; engine events -> JobEvents)
//   job::BuildPlan / job::Execute (the engine: validate and plan once at submission, run on a worker)
//   Scheduler  (queues, per-device workers, cancellation, deadlines)
//   JobStore   (job records, idempotency keys, events, result-cache index, retention; in memory or SQLite)
//   EventLog   (every job's events, replay then follow; each event goes to the store before anyone sees it)
// It records every state change the scheduler decides (SetState in job_state.h), answers repeated jobs from the
// result cache (result_cache.h), recovers the jobs of a previous process (durable store) and keeps the metrics.
// Thread-safe; Submit/Get/List/Cancel run on gRPC threads and never run the engine's forward passes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/plan.h"
#include "server/convert.h"
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
    Retention retention;              // finished jobs (and their events) kept; applied after every job's end
    bool requeue_interrupted = true;  // after a restart, a job that was running runs again; false: it FAILs
    bool cache = true;                // answer a repeated job from the result cache
    job::RunLimits limits;
    std::string server_version;  // also the engine version of the cache key
    Metrics* metrics = nullptr;  // optional
  };

  // `store` defaults to an InMemoryJobStore. A durable store may hold jobs of a previous process: those that
  // were RUNNING are marked INTERRUPTED here, a finished job whose Finished event a crash lost gets it, and
  // retention runs; Recover() queues the unfinished ones again once the models are loaded.
  JobManager(Options opts, const Registry* registry, std::unique_ptr<JobStore> store = nullptr);
  ~JobManager();  // Shutdown()

  // Recovery after a restart, once the registry has loaded its models: the previous process's QUEUED jobs, and
  // INTERRUPTED ones unless Options.requeue_interrupted is false (they FAIL), are planned again from the request
  // they were accepted with and queued in submission order; a job that cannot be planned any more (a model gone
  // or failed to load, a dataset missing) FAILs with the planning error. No-op for an in-memory store.
  void Recover();

  // Rejects new jobs and joins the workers. In memory, queued and running jobs are cancelled (their streams end
  // with Finished{CANCELLED}); with a durable store they are kept for the next start: queued ones stay QUEUED,
  // running ones stop at a layer boundary as INTERRUPTED, and open streams end with UNAVAILABLE.
  void Shutdown();

  // Converts, validates and plans the job (errors name the field), then queues it, or answers it from the result
  // cache. A repeated idempotency key from the same principal returns the first job.
  absl::StatusOr<sinkscope::v1::SubmitJobResponse> Submit(const sinkscope::v1::SubmitJobRequest& req,
                                                           const std::string& principal);
  absl::StatusOr<sinkscope::v1::Job> Get(const std::string& id) const;
  // `owner` non-empty: only that principal's jobs (the service passes it for callers who may not see others').
  absl::StatusOr<sinkscope::v1::ListJobsResponse> List(const sinkscope::v1::ListJobsRequest& req,
                                                       const std::string& owner = "") const;
  // The state after the request: CANCELLED, or the end a job had already reached.
  absl::StatusOr<sinkscope::v1::JobState> Cancel(const std::string& id);

  EventLog& events() { return events_; }

  // Paused: queued jobs stay queued (submissions still accepted) until resumed. For maintenance and tests.
  void SetPaused(bool paused) { scheduler_.SetPaused(paused); }
  bool paused() const { return scheduler_.paused(); }
  int32_t queued() const { return scheduler_.queued(); }
  int32_t running() const { return scheduler_.running(); }

 private:
  // A request made ready to queue: planned, its scheduler fields, its device and cache key.
  struct Prepared {
    std::shared_ptr<const job::Plan> plan;
    ServerFields server;
    std::string device;
    std::string cache_key;  // empty: not cacheable
  };
  absl::StatusOr<Prepared> Prepare(const sinkscope::v1::JobSpec& spec) const;
  Scheduler::Ticket MakeTicket(const std::string& id, const Prepared& p,
                               const google::protobuf::Timestamp& submitted_at) const;
  // Answers `rec` (a new job, not stored yet) with the events of `source`, a SUCCEEDED job with the same cache
  // key. FailedPrecondition when `source` cannot serve (gone, not a success): the caller runs the job instead.
  absl::StatusOr<sinkscope::v1::SubmitJobResponse> AnswerFromCache(const std::string& source, JobRecord rec);
  // Recovery of one job of the previous process.
  void RecoverOne(const JobRecord& rec);

  // Scheduler callbacks: run a plan (worker thread); record a state change.
  absl::Status Run(const Scheduler::Ticket& t, const job::CancelCheck& cancel);
  void OnState(const std::string& id, sinkscope::v1::JobState to, const absl::Status& why);
  // Appends an engine event to the job's log; progress and the summary also go into its record.
  void Emit(const std::string& id, sinkscope::v1::JobEvent ev);
  // The API view of a record: live queue position and event count added.
  sinkscope::v1::Job View(JobRecord r) const;
  // The job a retry with the same idempotency key names; ALREADY_EXISTS when `body` differs from the spec it was
  // submitted with (a reused key, not a retry).
  absl::StatusOr<sinkscope::v1::SubmitJobResponse> Existing(const std::string& id, const std::string& key,
                                                            const sinkscope::v1::JobSpec& body) const;

  const Options opts_;
  const Registry* registry_;
  std::unique_ptr<JobStore> store_;
  EventLog events_;
  std::vector<JobRecord> to_recover_;  // the previous process's unfinished jobs, for Recover()
  Scheduler scheduler_;                // last: its workers use the members above until Shutdown joins them
};

}  // namespace sinkscope::server
