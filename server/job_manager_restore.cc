// JobManager, the paths where a job is restored rather than submitted and run: recovery of the previous
// process's jobs (durable store) and answers from the result cache.
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "server/job_manager.h"
#include "server/job_state.h"
#include "server/log.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

void JobManager::Recover() {
  std::vector<JobRecord> jobs;
  jobs.swap(to_recover_);
  if (jobs.empty()) return;
  // In submission order, so that the queue keeps its FIFO order within a priority (jobs submitted since the
  // start, while the models were loading, are already ahead of them).
  for (const JobRecord& r : jobs) RecoverOne(r);
  spdlog::info("recovered {} unfinished job(s) of the previous run", jobs.size());
  if (opts_.metrics) opts_.metrics->SetQueue(scheduler_.queued(), scheduler_.running());
}

void JobManager::RecoverOne(const JobRecord& rec) {
  const std::string& id = rec.job.id();
  const bool interrupted = rec.job.state() == v1::JOB_STATE_INTERRUPTED;
  // A job that cannot run again fails: INTERRUPTED may fail directly; a QUEUED job fails the way any job does,
  // by being started (QUEUED -> RUNNING -> FAILED), so the state machine has no shortcut for it.
  const auto fail = [&](const absl::Status& why) {
    if (!interrupted) OnState(id, v1::JOB_STATE_RUNNING, absl::OkStatus());
    OnState(id, v1::JOB_STATE_FAILED, why);
  };
  if (interrupted && !opts_.requeue_interrupted) {
    fail(absl::AbortedError("interrupted by a server restart (state.interrupted: fail)"));
    return;
  }
  absl::StatusOr<Prepared> p = Prepare(rec.request);
  if (!p.ok()) {
    fail(absl::Status(p.status().code(), absl::StrCat("cannot run after the server restart: ", p.status().message())));
    return;
  }
  Scheduler::Ticket ticket = MakeTicket(id, *p, rec.job.submitted_at());
  ticket.admitted = true;
  absl::StatusOr<int32_t> position = scheduler_.Enqueue(std::move(ticket), [&](int32_t pos) -> absl::Status {
    // Recorded before a worker can take the job: its RUNNING must find it QUEUED.
    return store_
        ->Update(id,
                 [&](JobRecord& r) {
                   if (interrupted) RETURN_IF_ERROR(SetState(&r.job, v1::JOB_STATE_QUEUED, absl::OkStatus()));
                   r.job.set_queue_position(pos);
                   return absl::OkStatus();
                 })
        .status();
  });
  if (!position.ok()) {  // shutting down already: the job stays as it is for the next start
    spdlog::warn("job {}: not recovered: {}", id, position.status().ToString());
    return;
  }
  LogJob(spdlog::level::info, id,
         {{"state", "QUEUED"}, {"principal", rec.owner}, {"recovered_from", interrupted ? "INTERRUPTED" : "QUEUED"}},
         absl::StrCat("job ", id, ": ", interrupted ? "interrupted" : "queued", " before the restart, queued again at "
                      "position ", *position));
}

absl::StatusOr<v1::SubmitJobResponse> JobManager::AnswerFromCache(const std::string& source, JobRecord rec) {
  absl::StatusOr<std::vector<v1::JobEvent>> events = events_.Events(source);
  if (!events.ok() || events->empty() || !events->back().has_finished() ||
      events->back().finished().state() != v1::JOB_STATE_SUCCEEDED)
    return absl::FailedPreconditionError(absl::StrCat("job ", source, " has no successful result"));
  const std::string id = rec.job.id();
  const std::string owner = rec.owner, key = rec.idempotency_key;
  const v1::JobSpec body = rec.request;
  rec.job.set_queue_position(0);
  if (absl::Status st = store_->Put(std::move(rec)).status(); !st.ok()) {
    if (st.code() == absl::StatusCode::kAlreadyExists && !key.empty()) {  // a concurrent retry got in first
      if (absl::StatusOr<std::string> prior = store_->FindByKey(owner, key); prior.ok()) return Existing(*prior, key, body);
    }
    return st;
  }
  events_.Open(id);
  v1::JobEvent accepted;
  accepted.mutable_accepted()->set_queue_position(0);  // it never waits
  RETURN_IF_ERROR(events_.Append(id, std::move(accepted)).status());
  // The job goes through the states of any job (a crash half-way leaves a RUNNING job that a restart recovers
  // and runs for real); its events are the source's between Accepted and Finished, stamped anew by the log.
  OnState(id, v1::JOB_STATE_RUNNING, absl::OkStatus());
  for (v1::JobEvent& ev : *events) {
    if (ev.has_accepted() || ev.has_finished()) continue;
    ev.clear_job_id();
    ev.clear_seq();
    ev.clear_time();
    if (ev.has_summary()) {
      ev.mutable_summary()->set_cached(true);
      ev.mutable_summary()->set_cached_from(source);
    }
    Emit(id, std::move(ev));
  }
  OnState(id, v1::JOB_STATE_SUCCEEDED, absl::OkStatus());
  if (opts_.metrics) opts_.metrics->JobAccepted();
  spdlog::info("job {} answered from the result cache (results of {})", id, source);
  v1::SubmitJobResponse resp;
  resp.set_job_id(id);
  resp.set_queue_position(-1);
  return resp;
}

}  // namespace sinkscope::server
