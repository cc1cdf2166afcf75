#include "tests/client/fake_server.h"

#include <grpcpp/health_check_service_interface.h>

namespace sinkscope::testing {
namespace v1 = sinkscope::v1;

grpc::Status FakeSinkscope::Check(grpc::ServerContext* ctx) {
  std::string auth;
  auto it = ctx->client_metadata().find("authorization");
  if (it != ctx->client_metadata().end()) auth = std::string(it->second.data(), it->second.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_auth_ = auth;
  }
  if (token.empty()) return grpc::Status::OK;
  if (auth == "Bearer denied")
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "principal 'denied' may not submit jobs");
  if (auth != "Bearer " + token)
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or unknown bearer token");
  return grpc::Status::OK;
}

std::string FakeSinkscope::last_authorization() {
  std::lock_guard<std::mutex> lock(mu_);
  return last_auth_;
}

v1::JobSpec FakeSinkscope::last_spec() {
  std::lock_guard<std::mutex> lock(mu_);
  return last_spec_;
}

grpc::Status FakeSinkscope::GetServerInfo(grpc::ServerContext* ctx, const v1::GetServerInfoRequest*,
                                          v1::ServerInfo* r) {
  if (auto st = Check(ctx); !st.ok()) return st;
  r->set_version("fake");
  r->set_api_version("sinkscope.v1");
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* r) {
  if (auto st = Check(ctx); !st.ok()) return st;
  auto* m = r->add_models();
  m->set_name("fake-rope");
  m->set_state(v1::MODEL_STATE_READY);
  m->set_positional_scheme(v1::POSITIONAL_SCHEME_ROPE);
  m->set_num_layers(2);
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::ListDatasets(grpc::ServerContext* ctx, const v1::ListDatasetsRequest*,
                                         v1::ListDatasetsResponse* r) {
  if (auto st = Check(ctx); !st.ok()) return st;
  r->add_datasets()->set_name("fake-set");
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                                      v1::SubmitJobResponse* r) {
  if (auto st = Check(ctx); !st.ok()) return st;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_spec_ = req->spec();
  }
  r->set_job_id("j-fake");
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::StreamJob(grpc::ServerContext* ctx, const v1::StreamJobRequest* req,
                                      grpc::ServerWriter<v1::JobEvent>* w) {
  if (auto st = Check(ctx); !st.ok()) return st;
  if (req->job_id() != "j-fake") return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown job " + req->job_id());
  for (size_t i = req->from_seq(); i < events.size(); ++i) {
    v1::JobEvent ev = events[i];
    ev.set_job_id(req->job_id());
    ev.set_seq(i);
    w->Write(ev);
  }
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* j) {
  if (auto st = Check(ctx); !st.ok()) return st;
  j->set_id(req->job_id());
  j->set_state(v1::JOB_STATE_QUEUED);
  j->set_queue_position(1);
  return grpc::Status::OK;
}

grpc::Status FakeSinkscope::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest*, v1::CancelJobResponse* r) {
  if (auto st = Check(ctx); !st.ok()) return st;
  r->set_state(cancel_state);
  return grpc::Status::OK;
}

FakeServer::FakeServer(FakeSinkscope* service, const std::string& cert_pem, const std::string& key_pem, int port)
    : port_(port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder b;
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!cert_pem.empty()) {
    grpc::SslServerCredentialsOptions o;
    o.pem_key_cert_pairs.push_back({key_pem, cert_pem});
    creds = grpc::SslServerCredentials(o);
  }
  b.AddListeningPort("127.0.0.1:" + std::to_string(port), creds, &port_);
  b.RegisterService(service);
  server_ = b.BuildAndStart();
}

void FakeServer::SetServing(bool serving) { server_->GetHealthCheckService()->SetServingStatus(serving); }

FakeServer::~FakeServer() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

}  // namespace sinkscope::testing
