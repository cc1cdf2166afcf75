// gRPC front end (callback API): a thin shell mapping sinkscope.v1 RPCs onto the registry and job manager.
// No LibTorch here; gRPC threads never run the engine.
#pragma once

#include <chrono>
#include <string>

#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace sinkscope::server {

struct ServiceOptions {
  std::string version;
  std::string build_commit;
  std::string torch_version;
  int32_t compute_threads = 1;
  std::string datasets_dir;
  sinkscope::v1::ServerLimits limits;
  const TokenStore* tokens = nullptr;  // null or empty: every caller is the admin "anonymous" (auth.h)
};

class SinkscopeService final : public sinkscope::v1::Sinkscope::CallbackService {
 public:
  SinkscopeService(ServiceOptions opts, Registry* registry, JobManager* jobs, Metrics* metrics);

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx, const sinkscope::v1::GetServerInfoRequest*,
                                          sinkscope::v1::ServerInfo* resp) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx, const sinkscope::v1::ListModelsRequest*,
                                       sinkscope::v1::ListModelsResponse* resp) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx, const sinkscope::v1::GetModelRequest* req,
                                     sinkscope::v1::ModelInfo* resp) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* ctx, const sinkscope::v1::ListDatasetsRequest*,
                                         sinkscope::v1::ListDatasetsResponse* resp) override;
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* ctx, const sinkscope::v1::SubmitJobRequest* req,
                                      sinkscope::v1::SubmitJobResponse* resp) override;
  grpc::ServerWriteReactor<sinkscope::v1::JobEvent>* StreamJob(grpc::CallbackServerContext* ctx,
                                                              const sinkscope::v1::StreamJobRequest* req) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx, const sinkscope::v1::GetJobRequest* req,
                                   sinkscope::v1::Job* resp) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx, const sinkscope::v1::ListJobsRequest* req,
                                     sinkscope::v1::ListJobsResponse* resp) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* ctx, const sinkscope::v1::CancelJobRequest* req,
                                      sinkscope::v1::CancelJobResponse* resp) override;

 private:
  ServiceOptions opts_;
  Registry* registry_;
  JobManager* jobs_;
  Metrics* metrics_;
  grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const char* method, const absl::Status& st);
  // The authenticated caller of a request (UNAUTHENTICATED with the reason otherwise).
  absl::StatusOr<Principal> Caller(grpc::CallbackServerContext* ctx) const;
  // The job, if the caller may see it: its owner or an admin (PERMISSION_DENIED otherwise).
  absl::StatusOr<sinkscope::v1::Job> OwnJob(const Principal& who, const std::string& id) const;
  // What a caller may see of a model: server paths only for admins.
  static sinkscope::v1::ModelInfo ForCaller(sinkscope::v1::ModelInfo m, const Principal& who);
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// absl::Status -> grpc::Status (codes map 1:1).
grpc::Status ToGrpc(const absl::Status& st);

}  // namespace sinkscope::server
