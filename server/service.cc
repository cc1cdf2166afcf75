#include "server/service.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <mutex>

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
        writing_ = true;
        ++seq_;
        to_write = &ev_;
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

grpc::ServerUnaryReactor* SinkscopeService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                          const v1::GetServerInfoRequest*, v1::ServerInfo* resp) {
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
  for (auto& m : registry_->List()) *resp->add_models() = std::move(m);
  return Done(ctx, "ListModels", absl::OkStatus());
}

grpc::ServerUnaryReactor* SinkscopeService::GetModel(grpc::CallbackServerContext* ctx, const v1::GetModelRequest* req,
                                                     v1::ModelInfo* resp) {
  absl::StatusOr<v1::ModelInfo> m = registry_->Get(req->name());
  if (m.ok()) *resp = *std::move(m);
  return Done(ctx, "GetModel", m.status());
}

grpc::ServerUnaryReactor* SinkscopeService::ListDatasets(grpc::CallbackServerContext* ctx,
                                                         const v1::ListDatasetsRequest*, v1::ListDatasetsResponse* resp) {
  for (const auto& d : job::ListDatasets(opts_.datasets_dir)) ToProto(d, resp->add_datasets());
  return Done(ctx, "ListDatasets", absl::OkStatus());
}

grpc::ServerUnaryReactor* SinkscopeService::SubmitJob(grpc::CallbackServerContext* ctx,
                                                      const v1::SubmitJobRequest* req, v1::SubmitJobResponse* resp) {
  // Conversion, validation and planning (tokenisation of the prompts included) run on this gRPC thread; the
  // engine's forward passes run only on a scheduler worker.
  absl::StatusOr<v1::SubmitJobResponse> r = jobs_->Submit(*req, "anonymous");
  if (r.ok()) {
    *resp = *std::move(r);
  } else {
    spdlog::info("SubmitJob from {} rejected: {}", Peer(ctx), r.status().ToString());
    if (metrics_) metrics_->JobRejected(static_cast<int>(r.status().code()));
  }
  return Done(ctx, "SubmitJob", r.status());
}

grpc::ServerWriteReactor<v1::JobEvent>* SinkscopeService::StreamJob(grpc::CallbackServerContext*,
                                                                   const v1::StreamJobRequest* req) {
  if (metrics_) metrics_->RpcHandled("StreamJob", 0);
  return new StreamReactor(&jobs_->events(), req->job_id(), req->from_seq());
}

grpc::ServerUnaryReactor* SinkscopeService::GetJob(grpc::CallbackServerContext* ctx, const v1::GetJobRequest* req,
                                                   v1::Job* resp) {
  absl::StatusOr<v1::Job> j = jobs_->Get(req->job_id());
  if (j.ok()) *resp = *std::move(j);
  return Done(ctx, "GetJob", j.status());
}

grpc::ServerUnaryReactor* SinkscopeService::ListJobs(grpc::CallbackServerContext* ctx, const v1::ListJobsRequest* req,
                                                     v1::ListJobsResponse* resp) {
  absl::StatusOr<v1::ListJobsResponse> r = jobs_->List(*req);
  if (r.ok()) *resp = *std::move(r);
  return Done(ctx, "ListJobs", r.status());
}

grpc::ServerUnaryReactor* SinkscopeService::CancelJob(grpc::CallbackServerContext* ctx,
                                                      const v1::CancelJobRequest* req, v1::CancelJobResponse* resp) {
  absl::StatusOr<v1::JobState> s = jobs_->Cancel(req->job_id());
  if (s.ok()) resp->set_state(*s);
  return Done(ctx, "CancelJob", s.status());
}

}  // namespace sinkscope::server
