// An in-process stand-in for sinkscoped (no LibTorch) on 127.0.0.1: answers from a script, checks the bearer
// token, optionally serves TLS. For what only a scripted server can show the CLI: a job that FAILS at run time,
// a cancel that comes too late, credentials refused, TLS.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sinkscope/v1/service.grpc.pb.h"

namespace sinkscope::testing {

class FakeSinkscope final : public sinkscope::v1::Sinkscope::Service {
 public:
  // Non-empty: calls need "authorization: Bearer <token>" (UNAUTHENTICATED otherwise); token "denied" gets
  // PERMISSION_DENIED.
  std::string token;
  // Events StreamJob sends (job_id and seq filled in), and the state CancelJob reports.
  std::vector<sinkscope::v1::JobEvent> events;
  sinkscope::v1::JobState cancel_state = sinkscope::v1::JOB_STATE_CANCELLED;
  // Seen by the server.
  std::string last_authorization();
  sinkscope::v1::JobSpec last_spec();

  grpc::Status GetServerInfo(grpc::ServerContext*, const sinkscope::v1::GetServerInfoRequest*,
                             sinkscope::v1::ServerInfo*) override;
  grpc::Status ListModels(grpc::ServerContext*, const sinkscope::v1::ListModelsRequest*,
                          sinkscope::v1::ListModelsResponse*) override;
  grpc::Status ListDatasets(grpc::ServerContext*, const sinkscope::v1::ListDatasetsRequest*,
                            sinkscope::v1::ListDatasetsResponse*) override;
  grpc::Status SubmitJob(grpc::ServerContext*, const sinkscope::v1::SubmitJobRequest*,
                         sinkscope::v1::SubmitJobResponse*) override;
  grpc::Status StreamJob(grpc::ServerContext*, const sinkscope::v1::StreamJobRequest*,
                         grpc::ServerWriter<sinkscope::v1::JobEvent>*) override;
  grpc::Status GetJob(grpc::ServerContext*, const sinkscope::v1::GetJobRequest*, sinkscope::v1::Job*) override;
  grpc::Status CancelJob(grpc::ServerContext*, const sinkscope::v1::CancelJobRequest*,
                         sinkscope::v1::CancelJobResponse*) override;

 private:
  grpc::Status Check(grpc::ServerContext* ctx);
  std::mutex mu_;
  std::string last_auth_;
  sinkscope::v1::JobSpec last_spec_;
};

class FakeServer {
 public:
  // TLS when `cert_pem` and `key_pem` are given. `port` 0: any free port.
  explicit FakeServer(FakeSinkscope* service, const std::string& cert_pem = "", const std::string& key_pem = "",
                      int port = 0);
  ~FakeServer();
  // grpc.health.v1 (gRPC's default service, as sinkscoped has): SERVING or NOT_SERVING.
  void SetServing(bool serving);
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

 private:
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace sinkscope::testing
