// Assembles sinkscoped: registry + job manager + gRPC service + health + reflection on one port.
// Used by main.cc and by in-process integration tests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/config.h"
#include "server/job_manager.h"
#include "server/registry.h"
#include "server/service.h"

namespace sinkscope::server {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  int32_t compute_threads = 0;              // 0 = all cores
  bool wait_for_models = false;             // Start() returns only after every model is loaded (or failed)
  int32_t max_request_bytes = 4 << 20;
  std::string metrics_listen;  // "127.0.0.1:9464" exposes /metrics over HTTP; empty = none
};

extern const char kVersion[];

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& opts, const ServerConfig& cfg);
  ~Server();

  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:<port>"
  Registry& registry() { return *registry_; }
  JobManager& jobs() { return *jobs_; }
  Metrics& metrics() { return *metrics_; }
  // Graceful: stop accepting RPCs, cancel jobs, give in-flight RPCs up to `grace_seconds`, join threads.
  void Shutdown(double grace_seconds = 5.0);
  // Blocks until Shutdown() completes.
  void Wait();

 private:
  Server() = default;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<SinkscopeService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::thread health_thread_;
  std::string host_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace sinkscope::server
