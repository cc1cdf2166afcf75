#include "server/service.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/job/datasets.h"
#include "server/convert.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

namespace {

std::string Peer(grpc::CallbackServerContext* ctx) { return ctx->peer(); }

// A StreamJob refused before it starts (not authenticated, or someone else's job).
class RefusedStream : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  explicit RefusedStream(grpc::Status st) { Finish(std::move(st)); }
  void OnDone() override { delete this; }
};

// StreamJob: replays stored events from `from_seq`, then follows live events until Finished.
// Lifetime: the event log may hold a notify callback after the RPC is done; callbacks go through a shared Link that
// OnDone() clears, so a late notify never touches a deleted reactor.
class StreamReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  StreamReactor(EventLog* events, std::string id, uint64_t from) : events_(events), id_(std::move(id)), seq_(from) {
    link_ = std::make_shared<Link>();
    link_->r = this;
    Pump();
  }

  void OnWriteDone(bool ok) override {
    bool finish = false;
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      writing_ = false;
      if (!ok && !finished_) finished_ = finish = true;  // client went away
    }
    if (finish) {
      Finish(grpc::Status::CANCELLED);
      return;
    }
    Pump();
  }

  // Client cancelled or disconnected: if no write is in flight (e.g. waiting for a queued job's next event),
  // finish now rather than when the job next emits; an in-flight write ends in OnWriteDone(false) instead.
  void OnCancel() override {
    bool finish = false;
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      if (!finished_ && !writing_) finished_ = finish = true;
    }
    if (finish) Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    {
      std::lock_guard<std::recursive_mutex> l(link_->mu);
      link_->r = nullptr;
    }
    delete this;
  }

 private:
  struct Link {
    std::recursive_mutex mu;
    StreamReactor* r = nullptr;
  };

  void Pump() {
    const v1::JobEvent* to_write = nullptr;
    bool finish = false;
    grpc::Status status;
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      if (writing_ || finished_) return;
      std::weak_ptr<Link> weak = link_;
      auto notify = [weak] {
        if (auto link = weak.lock()) {
          std::lock_guard<std::recursive_mutex> l(link->mu);
          if (link->r) link->r->Pump();
        }
      };
      absl::StatusOr<EventLog::Poll> poll = events_->Next(id_, seq_, &ev_, notify);
      if (!poll.ok()) {
        finished_ = finish = true;
        status = ToGrpc(poll.status());
      } else if (*poll == EventLog::Poll::kEvent) {
        writing_ = wrote_ = true;
        ++seq_;
        to_write = &ev_;
      } else if (*poll == EventLog::Poll::kEnd && !wrote_ && seq_ > 0 && events_->size(id_) > 0) {
        // from_seq past the end of a finished job: still end the stream with its Finished event, as promised.
        seq_ = events_->size(id_) - 1;
        if (events_->Next(id_, seq_, &ev_, nullptr).value_or(EventLog::Poll::kEnd) == EventLog::Poll::kEvent) {
          writing_ = wrote_ = true;
          ++seq_;
          to_write = &ev_;
        } else {
          finished_ = finish = true;
        }
      } else if (*poll == EventLog::Poll::kEnd) {
        finished_ = finish = true;
      }
    }
    // No member access after StartWrite/Finish: OnWriteDone/OnDone may run concurrently.
    if (to_write) StartWrite(to_write);
    if (finish) Finish(status);
  }

  EventLog* events_;
  const std::string id_;
  uint64_t seq_;
  v1::JobEvent ev_;
  std::recursive_mutex mu_;
  bool writing_ = false;
  bool wrote_ = false;  // at least one event sent
  bool finished_ = false;
  std::shared_ptr<Link> link_;
};

}  // namespace

SinkscopeService::SinkscopeService(ServiceOptions opts, Registry* registry, JobManager* jobs, Metrics* metrics)
    : opts_(std::move(opts)), registry_(registry), jobs_(jobs), metrics_(metrics) {}

grpc::ServerUnaryReactor* SinkscopeService::Done(grpc::CallbackServerContext* ctx, const char* method,
                                                 const absl::Status& st) {
  if (metrics_) metrics_->RpcHandled(method, static_cast<int>(st.code()));
  auto* r = ctx->DefaultReactor();
  r->Finish(ToGrpc(st));
  return r;
}

absl::StatusOr<Principal> SinkscopeService::Caller(grpc::CallbackServerContext* ctx) const {
  if (opts_.tokens == nullptr) return Principal{"anonymous", Role::kAdmin};
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  std::optional<std::string_view> header;
  if (it != md.end()) header = std::string_view(it->second.data(), it->second.size());
  absl::StatusOr<Principal> who = opts_.tokens->Get()->Authenticate(header);
  if (!who.ok()) spdlog::warn("unauthenticated call from {}: {}", Peer(ctx), std::string(who.status().message()));
  return who;
}

absl::StatusOr<v1::Job> SinkscopeService::OwnJob(const Principal& who, const std::string& id) const {
  absl::StatusOr<v1::Job> j = jobs_->Get(id);
  if (j.ok() && !who.admin() && j->submitted_by() != who.name)
    return absl::PermissionDeniedError(absl::StrCat("job '", id, "' was submitted by another user"));
  return j;
}

v1::ModelInfo SinkscopeService::ForCaller(v1::ModelInfo m, const Principal& who) {
  if (who.admin()) return m;
  // Load errors name files: keep the reason, not the server's directory layout.
  if (!m.path().empty()) m.set_error(absl::StrReplaceAll(m.error(), {{m.path(), "<model dir>"}}));
  m.clear_path();
  return m;
}

grpc::ServerUnaryReactor* SinkscopeService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                          const v1::GetServerInfoRequest*, v1::ServerInfo* resp) {
  if (absl::StatusOr<Principal> who = Caller(ctx); !who.ok()) return Done(ctx, "GetServerInfo", who.status());
  resp->set_version(opts_.version);
  resp->set_api_version("sinkscope.v1");
  resp->set_build_commit(opts_.build_commit);
  resp->set_torch_version(opts_.torch_version);
  for (const auto& d : registry_->Devices()) resp->add_devices(d);
  resp->set_compute_threads(opts_.compute_threads);
  resp->set_uptime_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  resp->set_queued_jobs(jobs_->queued());
  resp->set_running_jobs(jobs_->running());
  *resp->mutable_limits() = opts_.limits;
  return Done(ctx, "GetServerInfo", absl::OkStatus());
}

grpc::ServerUnaryReactor* SinkscopeService::ListModels(grpc::CallbackServerContext* ctx, const v1::ListModelsRequest*,
                                                       v1::ListModelsResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "ListModels", who.status());
  for (auto& m : registry_->List()) *resp->add_models() = ForCaller(std::move(m), *who);
  return Done(ctx, "ListModels", absl::OkStatus());
}

grpc::ServerUnaryReactor* SinkscopeService::GetModel(grpc::CallbackServerContext* ctx, const v1::GetModelRequest* req,
                                                     v1::ModelInfo* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "GetModel", who.status());
  absl::StatusOr<v1::ModelInfo> m = registry_->Get(req->name());
  if (m.ok()) *resp = ForCaller(*std::move(m), *who);
  return Done(ctx, "GetModel", m.status());
}

grpc::ServerUnaryReactor* SinkscopeService::ListDatasets(grpc::CallbackServerContext* ctx,
                                                         const v1::ListDatasetsRequest*, v1::ListDatasetsResponse* resp) {
  if (absl::StatusOr<Principal> who = Caller(ctx); !who.ok()) return Done(ctx, "ListDatasets", who.status());
  for (const auto& d : job::ListDatasets(opts_.datasets_dir)) ToProto(d, resp->add_datasets());
  return Done(ctx, "ListDatasets", absl::OkStatus());
}

grpc::ServerUnaryReactor* SinkscopeService::SubmitJob(grpc::CallbackServerContext* ctx,
                                                      const v1::SubmitJobRequest* req, v1::SubmitJobResponse* resp) {
  // Conversion, validation and planning (tokenisation of the prompts included) run on this gRPC thread; the
  // engine's forward passes run only on a scheduler worker.
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "SubmitJob", who.status());
  absl::StatusOr<v1::SubmitJobResponse> r = jobs_->Submit(*req, who->name);
  if (r.ok()) {
    *resp = *std::move(r);
  } else {
    spdlog::info("SubmitJob from {} rejected: {}", Peer(ctx), r.status().ToString());
    if (metrics_) metrics_->JobRejected(static_cast<int>(r.status().code()));
  }
  return Done(ctx, "SubmitJob", r.status());
}

grpc::ServerWriteReactor<v1::JobEvent>* SinkscopeService::StreamJob(grpc::CallbackServerContext* ctx,
                                                                   const v1::StreamJobRequest* req) {
  absl::StatusOr<Principal> who = Caller(ctx);
  absl::Status allowed = who.ok() ? OwnJob(*who, req->job_id()).status() : who.status();
  if (allowed.code() == absl::StatusCode::kNotFound) allowed = absl::OkStatus();  // the stream reports it itself
  if (metrics_) metrics_->RpcHandled("StreamJob", static_cast<int>(allowed.code()));
  if (!allowed.ok()) return new RefusedStream(ToGrpc(allowed));
  return new StreamReactor(&jobs_->events(), req->job_id(), req->from_seq());
}

grpc::ServerUnaryReactor* SinkscopeService::GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                                   v1::Job* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "GetJob", who.status());
  absl::StatusOr<v1::Job> j = OwnJob(*who, req->job_id());
  if (j.ok()) *resp = *std::move(j);
  return Done(ctx, "GetJob", j.status());
}

grpc::ServerUnaryReactor* SinkscopeService::ListJobs(grpc::CallbackServerContext* ctx, const v1::ListJobsRequest* req,
                                                     v1::ListJobsResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "ListJobs", who.status());
  // Users list their own jobs; admins everyone's.
  absl::StatusOr<v1::ListJobsResponse> r = jobs_->List(*req, who->admin() ? std::string() : who->name);
  if (r.ok()) *resp = *std::move(r);
  return Done(ctx, "ListJobs", r.status());
}

grpc::ServerUnaryReactor* SinkscopeService::CancelJob(grpc::CallbackServerContext* ctx,
                                                      const v1::CancelJobRequest* req, v1::CancelJobResponse* resp) {
  absl::StatusOr<Principal> who = Caller(ctx);
  if (!who.ok()) return Done(ctx, "CancelJob", who.status());
  if (absl::Status own = OwnJob(*who, req->job_id()).status(); !own.ok()) return Done(ctx, "CancelJob", own);
  absl::StatusOr<v1::JobState> s = jobs_->Cancel(req->job_id());
  if (s.ok()) resp->set_state(*s);
  return Done(ctx, "CancelJob", s.status());
}

}  // namespace sinkscope::server
