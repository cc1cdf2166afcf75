#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/model/runtime.h"
#include "common/util/status_macros.h"
#include "server/convert.h"

namespace sinkscope::server {

const char kVersion[] = "0.1.0";

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& opts, const ServerConfig& cfg) {
  std::unique_ptr<Server> s(new Server());
  const size_t colon = opts.listen.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("listen: '", opts.listen, "' is not host:port"));
  s->host_ = opts.listen.substr(0, colon);
  model::SetComputeThreads(opts.compute_threads);
  const int32_t threads = model::ComputeThreads();

  ASSIGN_OR_RETURN(s->metrics_, Metrics::Create(opts.metrics_listen));
  s->registry_ = std::make_unique<Registry>(cfg.models);
  JobManager::Options jo;
  jo.max_queued_jobs = cfg.max_queued_jobs;
  jo.limits = cfg.limits;
  jo.server_version = kVersion;
  jo.metrics = s->metrics_.get();
  s->jobs_ = std::make_unique<JobManager>(jo, s->registry_.get());

  ServiceOptions so;
  so.version = kVersion;
  so.torch_version = model::TorchVersion();
  so.compute_threads = threads;
  so.datasets_dir = cfg.datasets_dir;
  ToProto(cfg.limits, cfg.max_queued_jobs, opts.max_request_bytes, &so.limits);
  s->service_ = std::make_unique<SinkscopeService>(so, s->registry_.get(), s->jobs_.get(), s->metrics_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder b;
  b.AddListeningPort(opts.listen, grpc::InsecureServerCredentials(), &s->port_);
  b.RegisterService(s->service_.get());
  b.SetMaxReceiveMessageSize(opts.max_request_bytes);
  s->grpc_ = b.BuildAndStart();
  if (!s->grpc_ || s->port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", opts.listen, " (address in use or invalid)"));
  auto* health = s->grpc_->GetHealthCheckService();
  health->SetServingStatus(false);  // NOT_SERVING until the models are loaded
  spdlog::info("sinkscoped {} listening on {}:{} ({} compute threads, torch {})", kVersion, s->host_, s->port_,
               threads, model::TorchVersion());
  if (s->metrics_->port() > 0) spdlog::info("metrics on http://{}:{}/metrics",
                                           opts.metrics_listen.substr(0, opts.metrics_listen.rfind(':')),
                                           s->metrics_->port());

  s->registry_->StartLoading();
  Server* raw = s.get();
  s->health_thread_ = std::thread([raw, health] {
    raw->registry_->WaitLoaded();
    const bool ok = raw->registry_->num_ready() > 0;
    raw->metrics_->SetModelsReady(raw->registry_->num_ready(),
                                  static_cast<int>(raw->registry_->List().size()) - raw->registry_->num_ready());
    health->SetServingStatus(ok);
    health->SetServingStatus("sinkscope.v1.Sinkscope", ok);
    if (ok)
      spdlog::info("serving: {} model(s) ready", raw->registry_->num_ready());
    else
      spdlog::error("no model could be loaded; health stays NOT_SERVING");
  });
  if (opts.wait_for_models) s->health_thread_.join();  // models loaded, health and gauges set
  return s;
}

std::string Server::address() const { return absl::StrCat(host_.empty() ? "127.0.0.1" : host_, ":", port_); }

void Server::Shutdown(double grace_seconds) {
  if (shut_down_) return;
  shut_down_ = true;
  spdlog::info("shutting down");
  if (grpc_) grpc_->GetHealthCheckService()->SetServingStatus(false);
  if (jobs_) jobs_->Shutdown();  // cancels jobs so streams end with Finished{CANCELLED}
  if (grpc_) {
    grpc_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  }
  if (health_thread_.joinable()) health_thread_.join();
  spdlog::info("shutdown complete");
}

void Server::Wait() {
  if (grpc_) grpc_->Wait();
}

Server::~Server() { Shutdown(0.5); }

}  // namespace sinkscope::server
