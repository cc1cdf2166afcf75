#include "server/job_manager.h"

#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job/validate.h"
#include "common/util/status_macros.h"
#include "server/job_state.h"
#include "server/log.h"
#include "server/result_cache.h"

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

// The last event of a job, from its final record.
v1::JobEvent FinishedEvent(const v1::Job& job) {
  v1::JobEvent ev;
  ev.mutable_finished()->set_state(job.state());
  if (job.has_error()) *ev.mutable_finished()->mutable_error() = job.error();
  return ev;
}

double Seconds(const google::protobuf::Timestamp& from, const google::protobuf::Timestamp& to) {
  return 1e-9 * static_cast<double>(TimeUtil::TimestampToNanoseconds(to) - TimeUtil::TimestampToNanoseconds(from));
}

}  // namespace

JobManager::JobManager(Options opts, const Registry* registry, std::unique_ptr<JobStore> store)
    : opts_(std::move(opts)),
      registry_(registry),
      store_(store ? std::move(store) : std::make_unique<InMemoryJobStore>()),
      events_(store_.get()),
      scheduler_(
          opts_.max_queued_jobs, [this](const Scheduler::Ticket& t, const job::CancelCheck& c) { return Run(t, c); },
          [this](const std::string& id, v1::JobState to, const absl::Status& why) { OnState(id, to, why); }) {
  for (JobRecord& r : store_->Unfinished()) {
    const std::string& id = r.job.id();
    if (IsTerminal(r.job.state())) {  // a crash came between its final record and its Finished event
      LogIfError(id, events_.Append(id, FinishedEvent(r.job), /*last=*/true).status());
      continue;
    }
    if (r.job.state() == v1::JOB_STATE_RUNNING) {  // it ran in a process that is gone (crash, kill -9)
      const absl::Status why = absl::AbortedError("the server stopped while the job was running");
      absl::StatusOr<JobRecord> now =
          store_->Update(id, [&](JobRecord& rec) { return SetState(&rec.job, v1::JOB_STATE_INTERRUPTED, why); });
      LogIfError(id, now.status());
      if (now.ok()) r = *std::move(now);
    }
    to_recover_.push_back(std::move(r));
  }
  store_->ForgetFinished(opts_.retention);
}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Shutdown() {
  // In memory a queued job would be lost silently: it is cancelled, and says so. A durable store keeps it.
  scheduler_.Shutdown(store_->durable() ? Scheduler::StopMode::kKeep : Scheduler::StopMode::kCancel);
  events_.Shutdown();
}

absl::StatusOr<JobManager::Prepared> JobManager::Prepare(const v1::JobSpec& request) const {
  ASSIGN_OR_RETURN(job::JobSpec spec, FromProto(request));
  Prepared p;
  ASSIGN_OR_RETURN(p.server, ServerFieldsFromProto(request));
  // Name rules before the lookup, so that an empty or repeated name is reported as such, not as an unknown model.
  RETURN_IF_ERROR(job::ValidateModelNames(spec.models));
  std::vector<job::ModelHandle> handles;
  for (const auto& name : spec.models) {
    ASSIGN_OR_RETURN(job::ModelHandle h, registry_->Handle(name));
    handles.push_back(std::move(h));
  }
  // Validated and planned once, here: a bad job never takes a queue slot, and the worker runs exactly this plan.
  ASSIGN_OR_RETURN(job::Plan built, job::BuildPlan(std::move(spec), std::move(handles), opts_.limits));
  p.plan = std::make_shared<const job::Plan>(std::move(built));
  ASSIGN_OR_RETURN(const v1::ModelInfo first_model, registry_->Get(p.plan->spec.models[0]));
  p.device = first_model.device();
  if (opts_.cache) p.cache_key = CacheKey(*p.plan, opts_.server_version);
  return p;
}

Scheduler::Ticket JobManager::MakeTicket(const std::string& id, const Prepared& p,
                                         const google::protobuf::Timestamp& submitted_at) const {
  Scheduler::Ticket t;
  t.id = id;
  t.device = p.device;
  t.priority = p.server.priority;
  if (p.server.deadline_seconds > 0) {
    // Relative to submission, which may have been before a restart: the wall clock carries it across.
    const double left = p.server.deadline_seconds - Seconds(submitted_at, Now());
    t.deadline = Scheduler::Clock::now() +
                 std::chrono::duration_cast<Scheduler::Clock::duration>(std::chrono::duration<double>(left));
  }
  t.plan = p.plan;
  return t;
}

absl::StatusOr<v1::SubmitJobResponse> JobManager::Submit(const v1::SubmitJobRequest& req,
                                                          const std::string& principal) {
  ASSIGN_OR_RETURN(const Prepared p, Prepare(req.spec()));
  const std::string& key = req.idempotency_key();
  if (!key.empty()) {
    if (absl::StatusOr<std::string> prior = store_->FindByKey(principal, key); prior.ok())
      return Existing(*prior, key, req.spec());
  }
  JobRecord rec;
  rec.owner = principal;
  rec.idempotency_key = key;
  rec.request = req.spec();
  rec.cache_key = p.cache_key;
  rec.job.set_id(NewJobId());
  *rec.job.mutable_spec() = ToProto(p.plan->spec, p.server);
  rec.job.mutable_spec()->set_no_cache(req.spec().no_cache());
  rec.job.set_state(v1::JOB_STATE_QUEUED);
  *rec.job.mutable_submitted_at() = Now();
  rec.job.set_submitted_by(principal);
  const std::string id = rec.job.id();

  if (!p.cache_key.empty() && !req.spec().no_cache()) {
    if (absl::StatusOr<std::string> source = store_->FindCached(p.cache_key); source.ok()) {
      absl::StatusOr<v1::SubmitJobResponse> answered = AnswerFromCache(*source, rec);
      if (answered.ok() || answered.status().code() != absl::StatusCode::kFailedPrecondition) return answered;
      spdlog::warn("job {}: cache entry {} unusable ({}); running it", id, *source, answered.status().ToString());
    }
  }
  absl::StatusOr<int32_t> position =
      scheduler_.Enqueue(MakeTicket(id, p, rec.job.submitted_at()), [&](int32_t pos) -> absl::Status {
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
      if (absl::StatusOr<std::string> prior = store_->FindByKey(principal, key); prior.ok())
        return Existing(*prior, key, req.spec());
    }
    return position.status();
  }
  if (opts_.metrics) {
    opts_.metrics->JobAccepted();
    opts_.metrics->SetQueue(scheduler_.queued(), scheduler_.running());
  }
  LogJob(spdlog::level::info, id,
         {{"state", "QUEUED"},
          {"principal", principal},
          {"models", p.plan->spec.models},
          {"priority", p.server.priority},
          {"queue_position", *position}},
         absl::StrCat("job ", id, " accepted from ", principal, ": models [", absl::StrJoin(p.plan->spec.models, ","),
                      "], ", p.plan->spec.analyses.size(), " analyses, priority ", p.server.priority,
                      ", queue position ", *position));
  v1::SubmitJobResponse resp;
  resp.set_job_id(id);
  resp.set_queue_position(*position);
  return resp;
}

absl::StatusOr<v1::SubmitJobResponse> JobManager::Existing(const std::string& id, const std::string& key,
                                                            const v1::JobSpec& body) const {
  ASSIGN_OR_RETURN(JobRecord rec, store_->Get(id));
  if (DeterministicBytes(rec.request) != DeterministicBytes(body))
    return absl::AlreadyExistsError(absl::StrCat("idempotency key '", key, "' was used for job ", id,
                                                 " with a different spec; a retry must resend the same spec, a new "
                                                 "job needs a new key"));
  const v1::Job job = View(std::move(rec));
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

absl::StatusOr<v1::ListJobsResponse> JobManager::List(const v1::ListJobsRequest& req, const std::string& owner) const {
  if (req.limit() < 0 || req.limit() > 1000)
    return absl::InvalidArgumentError(absl::StrCat("limit: ", req.limit(), " not in [0,1000]"));
  JobQuery q;
  q.limit = req.limit() == 0 ? 50 : req.limit();
  q.owner = owner;
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
  if (opts_.metrics) {
    // The worker still holds a job it reports the end of: it is no longer running.
    const bool ended_run = (IsTerminal(to) || to == v1::JOB_STATE_INTERRUPTED) && rec->job.has_started_at();
    opts_.metrics->SetQueue(scheduler_.queued(), std::max(0, scheduler_.running() - (ended_run ? 1 : 0)));
  }
  const v1::Job& job = rec->job;
  nlohmann::json fields = {{"state", v1::JobState_Name(to).substr(sizeof("JOB_STATE_") - 1)},
                           {"principal", rec->owner},
                           {"models", std::vector<std::string>(job.spec().models().begin(),
                                                               job.spec().models().end())}};
  if (to == v1::JOB_STATE_RUNNING) {
    fields["queue_seconds"] = Seconds(job.submitted_at(), job.started_at());
    LogJob(spdlog::level::info, id, fields, absl::StrCat("job ", id, ": running"));
    return;
  }
  if (to == v1::JOB_STATE_INTERRUPTED) {  // shutdown with a durable store: not an end, no Finished event
    LogJob(spdlog::level::info, id, fields,
           absl::StrCat("job ", id, ": interrupted by the shutdown; recovered at the next start"));
    return;
  }
  const bool started = job.has_started_at();
  const double run_s = started ? Seconds(job.started_at(), job.finished_at()) : 0;
  const double queue_s = Seconds(job.submitted_at(), started ? job.started_at() : job.finished_at());
  const bool cached = job.summary().cached();
  fields["run_seconds"] = run_s;
  fields["queue_seconds"] = queue_s;
  fields["cached"] = cached;
  fields["outcome"] = why.ok() ? "ok" : absl::StatusCodeToString(why.code());
  if (!why.ok()) fields["error"] = std::string(why.message());
  if (opts_.metrics) {
    opts_.metrics->JobFinished(to == v1::JOB_STATE_SUCCEEDED ? "succeeded"
                               : to == v1::JOB_STATE_FAILED  ? "failed"
                                                             : "cancelled",
                               run_s, queue_s);
    if (!cached)  // an answer from the cache processed no tokens
      for (const auto& m : job.summary().models()) opts_.metrics->TokensProcessed(m.model(), m.num_tokens());
  }
  if (why.ok()) {
    LogJob(spdlog::level::info, id, fields,
           absl::StrFormat("job %s: succeeded in %.2f s%s", id, run_s, cached ? " (from the result cache)" : ""));
  } else {
    LogJob(spdlog::level::warn, id, fields,
           absl::StrFormat("job %s: %s after %.2f s: %s", id, to == v1::JOB_STATE_FAILED ? "failed" : "cancelled",
                           run_s, why.ToString()));
  }
  // The newest success is the cache entry: a no_cache run replaces the result it did not want.
  if (to == v1::JOB_STATE_SUCCEEDED && !cached && !rec->cache_key.empty())
    LogIfError(id, store_->SetCached(rec->cache_key, id));
  LogIfError(id, events_.Append(id, FinishedEvent(job), /*last=*/true).status());
  // Retention: a forgotten job's record and events go together.
  for (const std::string& gone : store_->ForgetFinished(opts_.retention)) events_.Drop(gone);
}

}  // namespace sinkscope::server
