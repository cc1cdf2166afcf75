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
#include "server/convert.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;
using google::protobuf::util::TimeUtil;
using Clock = std::chrono::steady_clock;

struct JobManager::Record {
  v1::Job job;
  job::JobSpec spec;
  std::vector<v1::JobEvent> events;
  std::vector<std::function<void()>> waiters;
  std::atomic<bool> cancel{false};
  Clock::time_point deadline = Clock::time_point::max();
  uint64_t submit_seq = 0;
  bool terminal() const {
    return job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_FAILED ||
           job.state() == v1::JOB_STATE_CANCELLED;
  }
};

namespace {

std::string NewJobId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> l(mu);
  return absl::StrFormat("j-%016x", rng());
}

v1::JobError ErrorOf(const absl::Status& st) {
  v1::JobError e;
  e.set_code(static_cast<int>(st.code()));
  e.set_message(std::string(st.message()));
  return e;
}

// Forwards engine events into the job's log. Runs on the worker thread.
class Sink : public job::EventSink {
 public:
  using AppendFn = std::function<void(v1::JobEvent)>;
  explicit Sink(AppendFn append) : append_(std::move(append)) {}
  void OnStarted(const job::Started& s) override {
    v1::JobEvent ev;
    ev.mutable_started()->set_planned_passes(s.planned_passes);
    ev.mutable_started()->set_num_prompts(s.num_prompts);
    append_(std::move(ev));
  }
  void OnProgress(const job::Progress& p) override {
    v1::JobEvent ev;
    ToProto(p, ev.mutable_progress());
    append_(std::move(ev));
  }
  void OnLayer(const job::LayerResult& r) override {
    v1::JobEvent ev;
    ToProto(r, ev.mutable_layer());
    append_(std::move(ev));
  }
  void OnPerplexity(const job::PerplexityResult& r) override {
    v1::JobEvent ev;
    ToProto(r, ev.mutable_perplexity());
    append_(std::move(ev));
  }
  void OnSummary(const job::Summary& s) override {
    v1::JobEvent ev;
    ToProto(s, ev.mutable_summary());
    append_(std::move(ev));
  }

 private:
  AppendFn append_;
};

}  // namespace

JobManager::JobManager(Options opts, const Registry* registry) : opts_(std::move(opts)), registry_(registry) {}

JobManager::~JobManager() { Shutdown(); }

void JobManager::Start() { worker_ = std::thread([this] { WorkerLoop(); }); }

void JobManager::Shutdown() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    for (auto& rec : queue_) Finish(*rec, v1::JOB_STATE_CANCELLED, absl::CancelledError("server shutting down"));
    queue_.clear();
    if (running_) running_->cancel = true;
  }
  FlushNotify();
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

int32_t JobManager::QueuePosition(const Record& rec) const {
  int32_t pos = 0;
  for (const auto& r : queue_) {
    if (r.get() == &rec) continue;
    const bool ahead = r->job.spec().priority() > rec.job.spec().priority() ||
                       (r->job.spec().priority() == rec.job.spec().priority() && r->submit_seq < rec.submit_seq);
    pos += ahead;
  }
  return pos;
}

void JobManager::Append(Record& rec, v1::JobEvent ev) {
  ev.set_job_id(rec.job.id());
  ev.set_seq(rec.events.size());
  *ev.mutable_time() = TimeUtil::GetCurrentTime();
  rec.events.push_back(std::move(ev));
  rec.job.set_num_events(rec.events.size());
  if (opts_.metrics) opts_.metrics->SetQueue(static_cast<int>(queue_.size()), running_ ? 1 : 0);
  // Waiters (StreamJob reactors) call back into NextEvent, so they run after mu_ is released: FlushNotify().
  for (auto& w : rec.waiters) to_notify_.push_back(std::move(w));
  rec.waiters.clear();
}

void JobManager::FlushNotify() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> l(mu_);
    fns.swap(to_notify_);
  }
  for (auto& f : fns) f();
}

void JobManager::Finish(Record& rec, v1::JobState state, const absl::Status& st) {
  if (rec.terminal()) return;
  rec.job.set_state(state);
  rec.job.set_queue_position(-1);
  *rec.job.mutable_finished_at() = TimeUtil::GetCurrentTime();
  if (!st.ok()) *rec.job.mutable_error() = ErrorOf(st);
  if (state == v1::JOB_STATE_SUCCEEDED) rec.job.set_progress(1.0);
  if (opts_.metrics) {
    using google::protobuf::util::TimeUtil;
    const auto ns = [](const google::protobuf::Timestamp& t) { return TimeUtil::TimestampToNanoseconds(t); };
    const bool started = rec.job.has_started_at();
    const double queue_s = 1e-9 * static_cast<double>((started ? ns(rec.job.started_at()) : ns(rec.job.finished_at())) -
                                                      ns(rec.job.submitted_at()));
    const double run_s = started ? 1e-9 * static_cast<double>(ns(rec.job.finished_at()) - ns(rec.job.started_at())) : 0;
    opts_.metrics->JobFinished(state == v1::JOB_STATE_SUCCEEDED ? "succeeded"
                               : state == v1::JOB_STATE_FAILED  ? "failed"
                                                                : "cancelled",
                               run_s, queue_s);
    for (const auto& m : rec.job.summary().models()) opts_.metrics->TokensProcessed(m.model(), m.num_tokens());
  }
  v1::JobEvent ev;
  ev.mutable_finished()->set_state(state);
  if (!st.ok()) *ev.mutable_finished()->mutable_error() = ErrorOf(st);
  Append(rec, std::move(ev));
  Forget();
}

void JobManager::Forget() {
  int32_t finished = 0;
  for (const auto& id : order_) finished += jobs_.count(id) && jobs_.at(id)->terminal();
  while (finished > opts_.max_finished_jobs) {
    auto it = std::find_if(order_.begin(), order_.end(),
                           [&](const std::string& id) { return jobs_.count(id) && jobs_.at(id)->terminal(); });
    if (it == order_.end()) break;
    jobs_.erase(*it);
    order_.erase(it);
    --finished;
  }
}

absl::StatusOr<v1::SubmitJobResponse> JobManager::Submit(const v1::SubmitJobRequest& req,
                                                          const std::string& principal) {
  absl::StatusOr<job::JobSpec> spec = FromProto(req.spec());
  if (!spec.ok()) return spec.status();
  std::vector<job::ModelHandle> handles;
  for (const auto& name : spec->models) {
    absl::StatusOr<job::ModelHandle> h = registry_->Handle(name);
    if (!h.ok()) return h.status();
    handles.push_back(*std::move(h));
  }
  // Semantic validation against the models (hooks, layers, vocab, limits) happens before queueing so a bad job
  // never occupies the queue.
  if (absl::Status st = job::ValidateJob(*spec, handles, opts_.limits); !st.ok()) return st;

  std::lock_guard<std::mutex> l(mu_);
  if (stopping_) return absl::UnavailableError("server is shutting down");
  const std::string idem = req.idempotency_key().empty() ? "" : absl::StrCat(principal, "\x1f", req.idempotency_key());
  if (!idem.empty()) {
    auto it = idempotency_.find(idem);
    if (it != idempotency_.end() && jobs_.count(it->second)) {
      const auto& rec = jobs_.at(it->second);
      v1::SubmitJobResponse resp;
      resp.set_job_id(rec->job.id());
      resp.set_queue_position(rec->job.state() == v1::JOB_STATE_QUEUED ? QueuePosition(*rec) : -1);
      return resp;
    }
  }
  if (static_cast<int32_t>(queue_.size()) >= opts_.max_queued_jobs)
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full (", queue_.size(), " jobs waiting, limit ", opts_.max_queued_jobs, ")"));

  auto rec = std::make_shared<Record>();
  rec->spec = *std::move(spec);
  rec->submit_seq = next_submit_++;
  rec->job.set_id(NewJobId());
  *rec->job.mutable_spec() = WithDefaults(req.spec());
  rec->job.set_state(v1::JOB_STATE_QUEUED);
  *rec->job.mutable_submitted_at() = TimeUtil::GetCurrentTime();
  rec->job.set_submitted_by(principal);
  if (req.spec().deadline_seconds() > 0)
    rec->deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(req.spec().deadline_seconds()));
  queue_.push_back(rec);
  jobs_[rec->job.id()] = rec;
  order_.push_back(rec->job.id());
  if (!idem.empty()) idempotency_[idem] = rec->job.id();
  const int32_t pos = QueuePosition(*rec);
  rec->job.set_queue_position(pos);
  if (opts_.metrics) opts_.metrics->JobAccepted();
  v1::JobEvent ev;
  ev.mutable_accepted()->set_queue_position(pos);
  Append(*rec, std::move(ev));
  spdlog::info("job {} accepted from {}: models [{}], {} analyses, priority {}, queue position {}", rec->job.id(),
               principal, absl::StrJoin(rec->spec.models, ","), rec->spec.analyses.size(),
               req.spec().priority(), pos);
  cv_.notify_all();
  v1::SubmitJobResponse resp;
  resp.set_job_id(rec->job.id());
  resp.set_queue_position(pos);
  return resp;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
  v1::Job j = it->second->job;
  if (j.state() == v1::JOB_STATE_QUEUED) j.set_queue_position(QueuePosition(*it->second));
  return j;
}

absl::StatusOr<v1::ListJobsResponse> JobManager::List(const v1::ListJobsRequest& req) const {
  if (req.limit() < 0 || req.limit() > 1000)
    return absl::InvalidArgumentError(absl::StrCat("limit: ", req.limit(), " not in [0,1000]"));
  const int32_t limit = req.limit() == 0 ? 50 : req.limit();
  size_t start = 0;  // index from the newest
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &start))
    return absl::InvalidArgumentError(absl::StrCat("page_token: '", req.page_token(), "' is not a valid token"));
  std::lock_guard<std::mutex> l(mu_);
  v1::ListJobsResponse resp;
  size_t idx = 0;
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    auto jt = jobs_.find(*it);
    if (jt == jobs_.end()) continue;
    const auto& job = jt->second->job;
    if (req.states_size() > 0 &&
        std::find(req.states().begin(), req.states().end(), job.state()) == req.states().end())
      continue;
    if (idx++ < start) continue;
    if (resp.jobs_size() == limit) {
      resp.set_next_page_token(std::to_string(start + limit));
      break;
    }
    *resp.add_jobs() = job;
    if (job.state() == v1::JOB_STATE_QUEUED) resp.mutable_jobs()->rbegin()->set_queue_position(QueuePosition(*jt->second));
  }
  return resp;
}

absl::StatusOr<v1::JobState> JobManager::Cancel(const std::string& id) {
  absl::StatusOr<v1::JobState> r = CancelLocked(id);
  FlushNotify();
  return r;
}

absl::StatusOr<v1::JobState> JobManager::CancelLocked(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
  auto& rec = it->second;
  if (rec->terminal()) return rec->job.state();
  if (rec->job.state() == v1::JOB_STATE_QUEUED) {
    queue_.erase(std::remove(queue_.begin(), queue_.end(), rec), queue_.end());
    Finish(*rec, v1::JOB_STATE_CANCELLED, absl::CancelledError("cancelled by client"));
    return v1::JOB_STATE_CANCELLED;
  }
  rec->cancel = true;  // the worker stops at the next layer boundary and finishes it as CANCELLED
  spdlog::info("job {}: cancel requested while running", id);
  return v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<JobManager::Poll> JobManager::NextEvent(const std::string& id, uint64_t seq, v1::JobEvent* out,
                                                       std::function<void()> notify) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
  auto& rec = *it->second;
  if (seq < rec.events.size()) {
    *out = rec.events[seq];
    return Poll::kEvent;
  }
  if (rec.terminal()) return Poll::kEnd;
  rec.waiters.push_back(std::move(notify));
  return Poll::kWait;
}

void JobManager::SetPaused(bool paused) {
  {
    std::lock_guard<std::mutex> l(mu_);
    paused_ = paused;
  }
  cv_.notify_all();
}

bool JobManager::paused() const {
  std::lock_guard<std::mutex> l(mu_);
  return paused_;
}

int32_t JobManager::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  return static_cast<int32_t>(queue_.size());
}

int32_t JobManager::running() const {
  std::lock_guard<std::mutex> l(mu_);
  return running_ ? 1 : 0;
}

void JobManager::WorkerLoop() {
  for (;;) {
    FlushNotify();
    std::shared_ptr<Record> rec;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stopping_ || (!paused_ && !queue_.empty()); });
      if (stopping_) break;
      auto best = std::min_element(queue_.begin(), queue_.end(), [](const auto& a, const auto& b) {
        if (a->job.spec().priority() != b->job.spec().priority())
          return a->job.spec().priority() > b->job.spec().priority();
        return a->submit_seq < b->submit_seq;
      });
      rec = *best;
      queue_.erase(best);
      if (Clock::now() > rec->deadline) {
        Finish(*rec, v1::JOB_STATE_CANCELLED, absl::DeadlineExceededError("deadline passed while queued"));
        continue;
      }
      running_ = rec;
      rec->job.set_state(v1::JOB_STATE_RUNNING);
      rec->job.set_queue_position(-1);
      *rec->job.mutable_started_at() = TimeUtil::GetCurrentTime();
    }
    RunOne(rec);
    std::lock_guard<std::mutex> l(mu_);
    running_.reset();
  }
  FlushNotify();
}

void JobManager::RunOne(const std::shared_ptr<Record>& rec) {
  const std::string id = rec->job.id();
  spdlog::info("job {}: running", id);
  const auto t0 = Clock::now();
  std::vector<job::ModelHandle> handles;
  absl::Status st;
  for (const auto& name : rec->spec.models) {
    absl::StatusOr<job::ModelHandle> h = registry_->Handle(name);
    if (!h.ok()) {
      st = h.status();
      break;
    }
    handles.push_back(*std::move(h));
  }
  absl::StatusOr<job::Summary> summary = st.ok() ? absl::InternalError("job did not run") : st;
  if (st.ok()) {
    Sink sink([this, rec](v1::JobEvent ev) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (ev.has_progress()) rec->job.set_progress(ev.progress().fraction());
        if (ev.has_summary()) {
          ev.mutable_summary()->set_server_version(opts_.server_version);
          *rec->job.mutable_summary() = ev.summary();
        }
        Append(*rec, std::move(ev));
      }
      FlushNotify();
    });
    job::CancelCheck cancel = [rec]() -> absl::Status {
      if (rec->cancel) return absl::CancelledError("cancelled by client");
      if (Clock::now() > rec->deadline) return absl::DeadlineExceededError("job deadline exceeded");
      return absl::OkStatus();
    };
    try {
      summary = job::RunJob(rec->spec, handles, opts_.limits, &sink, cancel);
    } catch (const std::exception& e) {  // engine bugs must not take the server down
      summary = absl::InternalError(absl::StrCat("engine error: ", e.what()));
    }
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::lock_guard<std::mutex> l(mu_);
  if (summary.ok()) {
    Finish(*rec, v1::JOB_STATE_SUCCEEDED, absl::OkStatus());
    spdlog::info("job {}: succeeded in {:.2f} s", id, secs);
  } else {
    const bool cancelled = summary.status().code() == absl::StatusCode::kCancelled ||
                           summary.status().code() == absl::StatusCode::kDeadlineExceeded;
    Finish(*rec, cancelled ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_FAILED, summary.status());
    spdlog::warn("job {}: {} after {:.2f} s: {}", id, cancelled ? "cancelled" : "failed", secs,
                 summary.status().ToString());
  }
}

}  // namespace sinkscope::server
