// Prometheus metrics (prometheus-cpp). Exposed over HTTP at http://<metrics_listen>/metrics when a listen address is
// given; always available as text via Serialize() (tests). Metric names are prefixed sinkscope_.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sinkscope::server {

class Metrics {
 public:
  // listen: "127.0.0.1:9464", or empty for no HTTP endpoint.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(const std::string& listen);
  ~Metrics();

  void RpcHandled(const std::string& method, int grpc_code);
  void JobAccepted();
  void JobRejected(int grpc_code);
  // state: "succeeded" | "failed" | "cancelled"
  void JobFinished(const std::string& state, double run_seconds, double queue_seconds);
  void TokensProcessed(const std::string& model, int64_t tokens);
  void SetQueue(int queued, int running);
  void SetModelsReady(int ready, int failed);

  std::string Serialize() const;  // Prometheus text exposition format
  int port() const;               // bound HTTP port, 0 without an endpoint

 private:
  Metrics();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sinkscope::server
