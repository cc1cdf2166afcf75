// Assembles sinkscoped: registry + job manager + gRPC service + health + reflection on one port.
// Used by main.cc and by in-process integration tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/job_manager.h"
#include "server/registry.h"
#include "server/service.h"

namespace sinkscope::server {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  int32_t compute_threads = 0;              // 0 = all cores
  bool wait_for_models = false;             // Start() returns only after every model is loaded (or failed)
  std::string metrics_listen;  // "127.0.0.1:9464" exposes /metrics over HTTP; empty = none
  // Durable jobs (SQLite, sqlite_job_store.h) under this directory; empty = in memory, gone with the process.
  std::string state_dir;
  // Access (auth.h): Bearer tokens; TLS with a server certificate and key, and a client CA for mutual TLS.
  std::string tokens_file;
  std::string tls_cert, tls_key, tls_client_ca;
  // A non-loopback listen address without tokens would let anyone on the network run and read every job: refused
  // unless this is set (then logged loudly).
  bool insecure_allow_remote = false;
};

extern const char kVersion[];

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& opts, const ServerConfig& cfg);
  ~Server();

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:<port>"
  Registry& registry() { return *registry_; }
  // Health of the whole server and of each model ("sinkscope.v1.Sinkscope/<model>"), from the registry's states.
  void UpdateHealth();
  JobManager& jobs() { return *jobs_; }
  Metrics& metrics() { return *metrics_; }
  // SIGHUP: re-reads --tokens_file (added, removed or rotated tokens take effect for new requests). An error keeps
  // the tokens in use. OK and nothing to do without a tokens file.
  absl::Status ReloadTokens();
  // Graceful: stop accepting RPCs, cancel jobs, give in-flight RPCs up to `grace_seconds`, join threads.
  void Shutdown(double grace_seconds = 5.0);
  // Blocks until Shutdown() completes.
  void Wait();

 private:
  Server() = default;
  std::unique_ptr<Metrics> metrics_;
  std::shared_ptr<Registry> registry_;  // shared with its loading threads
  std::unique_ptr<TokenStore> tokens_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<SinkscopeService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::thread health_thread_;
  std::string host_;
  int port_ = 0;
  std::atomic<bool> shut_down_{false};
};

// True for 127.0.0.0/8, ::1, localhost and unix sockets: addresses only this machine can reach.
bool IsLoopback(const std::string& host);

}  // namespace sinkscope::server
