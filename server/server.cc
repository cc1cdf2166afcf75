#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/model/runtime.h"
#include "common/util/file.h"
#include "common/util/status_macros.h"
#include "server/convert.h"
#include "server/sqlite_job_store.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

const char kVersion[] = "0.1.0";

namespace {

// Plain text unless --tls_cert/--tls_key; with --tls_client_ca clients must present a certificate it signed.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& opts) {
  if (opts.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(opts.tls_client_ca.empty()
                                            ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                            : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.private_key, util::ReadFile(opts.tls_key));
  ASSIGN_OR_RETURN(pair.cert_chain, util::ReadFile(opts.tls_cert));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!opts.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, util::ReadFile(opts.tls_client_ca));
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& opts, const ServerConfig& cfg) {
  std::unique_ptr<Server> s(new Server());
  const size_t colon = opts.listen.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("listen: '", opts.listen, "' is not host:port"));
  s->host_ = opts.listen.substr(0, colon);
  model::SetComputeThreads(opts.compute_threads);
  const int32_t threads = model::ComputeThreads();

  if (!opts.tokens_file.empty()) {
    ASSIGN_OR_RETURN(s->tokens_, TokenStore::Open(opts.tokens_file));
    spdlog::info("auth: {} token(s) from {}", s->tokens_->Get()->size(), opts.tokens_file);
  } else if (!IsLoopback(s->host_)) {
    if (!opts.insecure_allow_remote)
      return absl::FailedPreconditionError(absl::StrCat(
          "listen: ", opts.listen, " is reachable from other machines but no --tokens_file is given: anyone there could "
          "run, read and cancel every job. Give --tokens_file (and --tls_cert/--tls_key), or --insecure_allow_remote "
          "to accept that"));
    spdlog::warn("!!! INSECURE: listening on {} without tokens (--insecure_allow_remote): anyone who can reach this "
                 "port can run, read and cancel every job !!!", opts.listen);
  }
  if (opts.tls_cert.empty() != opts.tls_key.empty())
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  if (!opts.tls_client_ca.empty() && opts.tls_cert.empty())
    return absl::InvalidArgumentError("--tls_client_ca (mutual TLS) needs --tls_cert and --tls_key");
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> creds, Credentials(opts));

  ASSIGN_OR_RETURN(s->metrics_, Metrics::Create(opts.metrics_listen));
  // Memory budgets: as configured, or sized per model from its device by the registry (the handles carry them).
  MemoryPolicy memory;
  memory.forward_auto = cfg.forward_memory_auto;
  memory.residual_auto = cfg.residual_memory_auto;
  memory.forward_bytes = cfg.limits.forward_memory_bytes;
  memory.residual_bytes = cfg.limits.residual_memory_bytes;
  s->registry_ = MakeRegistry(cfg.models, memory);
  JobManager::Options jo;
  jo.max_queued_jobs = cfg.max_queued_jobs;
  job::RunLimits limits = cfg.limits;
  jo.limits = limits;
  jo.server_version = kVersion;
  jo.metrics = s->metrics_.get();
  jo.retention = {cfg.state.keep_finished, cfg.state.max_bytes, cfg.state.max_age_days * 86400.0};
  jo.requeue_interrupted = cfg.state.requeue_interrupted;
  jo.cache = cfg.state.cache;
  std::unique_ptr<JobStore> store;  // null: in memory
  if (!opts.state_dir.empty()) {
    ASSIGN_OR_RETURN(store, SqliteJobStore::Open(opts.state_dir));
    spdlog::info("job state in {}", opts.state_dir);
  }
  s->jobs_ = std::make_unique<JobManager>(jo, s->registry_.get(), std::move(store));

  ServiceOptions so;
  so.version = kVersion;
  so.torch_version = model::TorchVersion();
  so.compute_threads = threads;
  so.datasets_dir = cfg.datasets_dir;
  so.tokens = s->tokens_.get();
  ToProto(limits, cfg.max_queued_jobs, cfg.max_request_bytes, &so.limits);
  if (cfg.forward_memory_auto) {
    so.limits.set_forward_memory_bytes(0);
    so.limits.set_forward_memory_per_model(true);
  }
  if (cfg.residual_memory_auto) {
    so.limits.set_residual_memory_bytes(0);
    so.limits.set_residual_memory_per_model(true);
  }
  s->service_ = std::make_unique<SinkscopeService>(so, s->registry_.get(), s->jobs_.get(), s->metrics_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder b;
  // SO_REUSEPORT off: a second server on a taken port must fail at start, not share it with the first.
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  b.AddListeningPort(opts.listen, creds, &s->port_);
  b.RegisterService(s->service_.get());
  b.SetMaxReceiveMessageSize(cfg.max_request_bytes);
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

  s->registry_->StartLoading(std::chrono::seconds(cfg.load_timeout_seconds));
  Server* raw = s.get();
  s->health_thread_ = std::thread([raw] {
    // Loading can be stalled (a slow file system): poll, so that shutdown never waits for it.
    while (!raw->shut_down_ && !raw->registry_->WaitLoaded(std::chrono::steady_clock::now() + std::chrono::seconds(1))) {
    }
    if (raw->shut_down_) return;
    raw->jobs_->Recover();  // the previous run's unfinished jobs, now that their models are loaded
    raw->UpdateHealth();
  });
  if (opts.wait_for_models) s->health_thread_.join();  // models loaded, health and gauges set
  return s;
}

void Server::UpdateHealth() {
  auto* health = grpc_->GetHealthCheckService();
  const int ready = registry_->num_ready(), failed = registry_->num_failed();
  metrics_->SetModelsReady(ready, failed);
  // SERVING only when every configured model is: a FAILED model is a misconfigured server, and probes should say so.
  const bool ok = failed == 0 && ready > 0 && !shut_down_;
  health->SetServingStatus(ok);
  health->SetServingStatus("sinkscope.v1.Sinkscope", ok);
  for (const auto& m : registry_->List())
    health->SetServingStatus(absl::StrCat("sinkscope.v1.Sinkscope/", m.name()),
                             m.state() == v1::MODEL_STATE_READY && !shut_down_);
  if (ok)
    spdlog::info("serving: {} model(s) ready", ready);
  else
    spdlog::error("{} of {} model(s) failed to load; health is NOT_SERVING (per-model health: "
                  "sinkscope.v1.Sinkscope/<model>)", failed, ready + failed);
}

bool IsLoopback(const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0 || host.rfind("unix:", 0) == 0;
}

std::string Server::address() const { return absl::StrCat(host_.empty() ? "127.0.0.1" : host_, ":", port_); }

void Server::Shutdown(double grace_seconds) {
  if (shut_down_) return;
  shut_down_ = true;
  spdlog::info("shutting down");
  if (grpc_) {
    grpc_->GetHealthCheckService()->SetServingStatus(false);
    grpc_->GetHealthCheckService()->SetServingStatus("sinkscope.v1.Sinkscope", false);
  }
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

absl::Status Server::ReloadTokens() {
  if (!tokens_) return absl::OkStatus();
  RETURN_IF_ERROR(tokens_->Reload());
  spdlog::info("auth: reloaded {}: {} token(s)", tokens_->path(), tokens_->Get()->size());
  return absl::OkStatus();
}

}  // namespace sinkscope::server
