#include "server/job_manager.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job/validate.h"
#include "common/util/status_macros.h"
#include "server/convert.h"
#include "server/job_state.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;
using google::protobuf::util::TimeUtil;

namespace {

std::string NewJobId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  return absl::StrFormat("j-%016x", rng());
}

// Bookkeeping after the engine has run cannot fail the job any more; a failure there is a server bug, logged.
void LogIfError(const std::string& id, const absl::Status& st) {
  if (!st.ok()) spdlog::error("job {}: {}", id, st.ToString());
}

double Seconds(const google::protobuf::Timestamp& from, const google::protobuf::Timestamp& to) {
  return 1e-9 * static_cast<double>(TimeUtil::TimestampToNanoseconds(to) - TimeUtil::TimestampToNanoseconds(from));
}

}  // namespace

JobManager::JobManager(Options opts, const Registry* registry, std::unique_ptr<JobStore> store)
    : opts_(std::move(opts)),
      registry_(registry),
      store_(store ? std::move(store) : std::make_unique<InMemoryJobStore>()),
      scheduler_(
          opts_.max_queued_jobs, [this](const Scheduler::Ticket& t, const job::CancelCheck& c) { return Run(t, c); },
          [this](const std::string& id, v1::JobState to, const absl::Status& why) { OnState(id, to, why); }) {}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Shutdown() { scheduler_.Shutdown(); }

absl::StatusOr<v1::SubmitJobResponse> JobManager::Submit(const v1::SubmitJobRequest& req,
                                                          const std::string& principal) {
  ASSIGN_OR_RETURN(job::JobSpec spec, FromProto(req.spec()));
  ASSIGN_OR_RETURN(const ServerFields server, ServerFieldsFromProto(req.spec()));
  // Name rules before the lookup, so that an empty or repeated name is reported as such, not as an unknown model.
  RETURN_IF_ERROR(job::ValidateModelNames(spec.models));
  std::vector<job::ModelHandle> handles;
  for (const auto& name : spec.models) {
    ASSIGN_OR_RETURN(job::ModelHandle h, registry_->Handle(name));
    handles.push_back(std::move(h));
  }
  // Validated and planned once, here: a bad job never takes a queue slot, and the worker runs exactly this plan.
  ASSIGN_OR_RETURN(job::Plan built, job::BuildPlan(std::move(spec), std::move(handles), opts_.limits));
  auto plan = std::make_shared<const job::Plan>(std::move(built));

  const std::string& key = req.idempotency_key();
  if (!key.empty()) {
    if (absl::StatusOr<std::string> prior = store_->FindByKey(principal, key); prior.ok()) return Existing(*prior);
  }
  ASSIGN_OR_RETURN(const v1::ModelInfo first_model, registry_->Get(plan->spec.models[0]));
  Scheduler::Ticket ticket;
  ticket.id = NewJobId();
  ticket.device = first_model.device();
  ticket.priority = server.priority;
  if (server.deadline_seconds > 0)
    ticket.deadline = Scheduler::Clock::now() + std::chrono::duration_cast<Scheduler::Clock::duration>(
                                                    std::chrono::duration<double>(server.deadline_seconds));
  ticket.plan = plan;
  const std::string id = ticket.id;

  JobRecord rec;
  rec.owner = principal;
  rec.idempotency_key = key;
  rec.job.set_id(id);
  *rec.job.mutable_spec() = ToProto(plan->spec, server);
  rec.job.set_state(v1::JOB_STATE_QUEUED);
  *rec.job.mutable_submitted_at() = TimeUtil::GetCurrentTime();
  rec.job.set_submitted_by(principal);
  absl::StatusOr<int32_t> position = scheduler_.Enqueue(std::move(ticket), [&](int32_t pos) -> absl::Status {
    rec.job.set_queue_position(pos);
    RETURN_IF_ERROR(store_->Put(std::move(rec)).status());
    events_.Open(id);
    v1::JobEvent accepted;
    accepted.mutable_accepted()->set_queue_position(pos);
    return events_.Append(id, std::move(accepted)).status();  // seq 0: the worker cannot take the job yet
  });
  if (!position.ok()) {
    // A concurrent retry with the same key got in first: answer as a later retry would.
    if (position.status().code() == absl::StatusCode::kAlreadyExists && !key.empty()) {
      if (absl::StatusOr<std::string> prior = store_->FindByKey(principal, key); prior.ok()) return Existing(*prior);
    }
    return position.status();
  }
  if (opts_.metrics) {
    opts_.metrics->JobAccepted();
    opts_.metrics->SetQueue(scheduler_.queued(), scheduler_.running());
  }
  spdlog::info("job {} accepted from {}: models [{}], {} analyses, priority {}, queue position {}", id, principal,
               absl::StrJoin(plan->spec.models, ","), plan->spec.analyses.size(), server.priority, *position);
  v1::SubmitJobResponse resp;
  resp.set_job_id(id);
  resp.set_queue_position(*position);
  return resp;
}

absl::StatusOr<v1::SubmitJobResponse> JobManager::Existing(const std::string& id) const {
  ASSIGN_OR_RETURN(const v1::Job job, Get(id));
  v1::SubmitJobResponse resp;
  resp.set_job_id(job.id());
  resp.set_queue_position(job.state() == v1::JOB_STATE_QUEUED ? job.queue_position() : -1);
  return resp;
}

v1::Job JobManager::View(JobRecord r) const {
  v1::Job job = std::move(r.job);
  job.set_num_events(events_.size(job.id()));
  // Only the scheduler knows the position now; a job its worker has just taken, not yet RUNNING, is next (0).
  if (job.state() == v1::JOB_STATE_QUEUED) job.set_queue_position(std::max(0, scheduler_.QueuePosition(job.id())));
  return job;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& id) const {
  ASSIGN_OR_RETURN(JobRecord r, store_->Get(id));
  return View(std::move(r));
}

absl::StatusOr<v1::ListJobsResponse> JobManager::List(const v1::ListJobsRequest& req) const {
  if (req.limit() < 0 || req.limit() > 1000)
    return absl::InvalidArgumentError(absl::StrCat("limit: ", req.limit(), " not in [0,1000]"));
  JobQuery q;
  q.limit = req.limit() == 0 ? 50 : req.limit();
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &q.offset))
    return absl::InvalidArgumentError(absl::StrCat("page_token: '", req.page_token(), "' is not a valid token"));
  for (int s : req.states()) q.states.push_back(static_cast<v1::JobState>(s));
  JobPage page = store_->List(q);
  v1::ListJobsResponse resp;
  for (JobRecord& r : page.records) *resp.add_jobs() = View(std::move(r));
  if (page.more) resp.set_next_page_token(std::to_string(q.offset + q.limit));
  return resp;
}

absl::StatusOr<v1::JobState> JobManager::Cancel(const std::string& id) {
  ASSIGN_OR_RETURN(const JobRecord r, store_->Get(id));
  if (IsTerminal(r.job.state())) return r.job.state();
  // NotFound here means the job is ending on its own right now; like a cancel that lands during a job's last
  // layer, the answer is CANCELLED and the record gets whatever end the job really reached.
  scheduler_.Cancel(id).IgnoreError();
  return v1::JOB_STATE_CANCELLED;
}

absl::Status JobManager::Run(const Scheduler::Ticket& t, const job::CancelCheck& cancel) {
  JobEventSink sink([this, &t](v1::JobEvent ev) { Emit(t.id, std::move(ev)); });
  try {
    return job::Execute(*t.plan, &sink, cancel).status();
  } catch (const std::exception& e) {  // an engine bug fails the job, not the server
    return absl::InternalError(absl::StrCat("engine error: ", e.what()));
  }
}

void JobManager::Emit(const std::string& id, v1::JobEvent ev) {
  if (ev.has_summary()) ev.mutable_summary()->set_server_version(opts_.server_version);
  // The record first: a watcher that has seen the event finds the same progress / summary in GetJob.
  if (ev.has_progress() || ev.has_summary()) {
    const auto record = [&](JobRecord& rec) {
      if (ev.has_progress()) rec.job.set_progress(ev.progress().fraction());
      if (ev.has_summary()) *rec.job.mutable_summary() = ev.summary();
      return absl::OkStatus();
    };
    LogIfError(id, store_->Update(id, record).status());
  }
  LogIfError(id, events_.Append(id, std::move(ev)).status());
}

void JobManager::OnState(const std::string& id, v1::JobState to, const absl::Status& why) {
  absl::StatusOr<JobRecord> rec = store_->Update(id, [&](JobRecord& r) { return SetState(&r.job, to, why); });
  if (!rec.ok()) {  // a scheduler bug: the record keeps its last legal state
    LogIfError(id, rec.status());
    return;
  }
  if (opts_.metrics) opts_.metrics->SetQueue(scheduler_.queued(), scheduler_.running());
  if (to == v1::JOB_STATE_RUNNING) {
    spdlog::info("job {}: running", id);
    return;
  }
  const v1::Job& job = rec->job;
  const bool started = job.has_started_at();
  const double run_s = started ? Seconds(job.started_at(), job.finished_at()) : 0;
  if (opts_.metrics) {
    const double queue_s = Seconds(job.submitted_at(), started ? job.started_at() : job.finished_at());
    opts_.metrics->JobFinished(to == v1::JOB_STATE_SUCCEEDED ? "succeeded"
                               : to == v1::JOB_STATE_FAILED  ? "failed"
                                                             : "cancelled",
                               run_s, queue_s);
    for (const auto& m : job.summary().models()) opts_.metrics->TokensProcessed(m.model(), m.num_tokens());
  }
  if (why.ok()) {
    spdlog::info("job {}: succeeded in {:.2f} s", id, run_s);
  } else {
    spdlog::warn("job {}: {} after {:.2f} s: {}", id, to == v1::JOB_STATE_FAILED ? "failed" : "cancelled", run_s,
                 why.ToString());
  }
  v1::JobEvent finished;
  finished.mutable_finished()->set_state(to);
  if (job.has_error()) *finished.mutable_finished()->mutable_error() = job.error();
  LogIfError(id, events_.Append(id, std::move(finished), /*last=*/true).status());
  // Retention: a forgotten job's record and events go together.
  for (const std::string& gone : store_->ForgetFinished(opts_.max_finished_jobs)) events_.Drop(gone);
}

}  // namespace sinkscope::server
