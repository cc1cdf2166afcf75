// sinkscope: command-line client for sinkscoped (gRPC only; no LibTorch).
//   sinkscope models
//   sinkscope run -m tiny-rope,tiny-drope --dataset brown-heldout --phase
//   sinkscope run -m tiny-rope --text "The quick brown fox" --sink-rate --format json
// Exit status: 0 ok, 1 job failed or was cancelled, 2 usage or RPC error.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <thread>

#include "client/job_flags.h"
#include "client/render.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace v1 = sinkscope::v1;
using sinkscope::client::Format;

namespace {

struct Global {
  std::string server = "127.0.0.1:50051";
  std::string format = "table";
  double timeout = 30;
  std::string token;
  bool quiet = false;
};

int RpcError(const grpc::Status& st) {
  std::cerr << "sinkscope: " << (st.error_code() == grpc::StatusCode::UNAVAILABLE ? "server unavailable: " : "")
            << st.error_message() << " (code " << st.error_code() << ")\n";
  return 2;
}

class Client {
 public:
  explicit Client(const Global& g) : g_(g) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(g.server, grpc::InsecureChannelCredentials(), args);
    stub_ = v1::Sinkscope::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }
  void Prepare(grpc::ClientContext* ctx, bool deadline = true) const {
    if (deadline)
      ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(g_.timeout * 1000)));
    if (!g_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + g_.token);
  }
  v1::Sinkscope::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }

 private:
  const Global& g_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Sinkscope::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// Streams events of a job from `from`, rendering them. Returns the exit status.
int Watch(Client& c, const Global& g, Format f, const std::string& id, uint64_t from) {
  sinkscope::client::EventRenderer r(f, std::cout, f == Format::kTable && !g.quiet && isatty(2));
  v1::StreamJobRequest req;
  req.set_job_id(id);
  req.set_from_seq(from);
  grpc::ClientContext ctx;
  c.Prepare(&ctx, /*deadline=*/false);
  auto reader = c.stub().StreamJob(&ctx, req);
  v1::JobEvent ev;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  while (reader->Read(&ev)) {
    r.Render(ev);
    if (ev.has_finished()) final_state = ev.finished().state();
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return RpcError(st);
  return final_state == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sinkscope: measure attention sinks, massive activations and ablated perplexity on a sinkscoped server"};
  app.require_subcommand(1);
  Global g;
  app.add_option("-s,--server", g.server, "Server address host:port")->envname("SINKSCOPE_SERVER");
  app.add_option("-f,--format", g.format, "Output format: table | json | csv")
      ->check(CLI::IsMember({"table", "json", "csv"}));
  app.add_option("--timeout", g.timeout, "Deadline in seconds for unary calls");
  app.add_option("--token", g.token, "Bearer token (if the server requires auth)")->envname("SINKSCOPE_TOKEN");
  app.add_flag("-q,--quiet", g.quiet, "No progress line on stderr");

  auto* info = app.add_subcommand("info", "Server version, devices, limits, queue");
  auto* models = app.add_subcommand("models", "List models");
  std::string model_name;
  auto* model = app.add_subcommand("model", "Show one model (with its hook points)");
  model->add_option("name", model_name)->required();
  auto* datasets = app.add_subcommand("datasets", "List built-in datasets");
  double wait = 0;
  auto* health = app.add_subcommand("health", "Check the grpc.health.v1 status (exit 0 when SERVING)");
  health->add_option("--wait", wait, "Poll up to this many seconds for SERVING");

  sinkscope::client::JobFlags jf;
  bool detach = false;
  auto* run = app.add_subcommand("run", "Submit a job and stream its results");
  sinkscope::client::AddJobFlags(run, &jf);
  run->add_flag("--detach", detach, "Print the job id and return without streaming");
  auto* submit = app.add_subcommand("submit", "Submit a job and print its id");
  sinkscope::client::JobFlags sf;
  sinkscope::client::AddJobFlags(submit, &sf);

  std::string job_id;
  uint64_t from_seq = 0;
  auto* watch = app.add_subcommand("watch", "Stream a job's events (replays stored ones first)");
  watch->add_option("job", job_id)->required();
  watch->add_option("--from", from_seq, "First event seq");
  auto* get = app.add_subcommand("get", "Show a job's record and summary");
  get->add_option("job", job_id)->required();
  auto* cancel = app.add_subcommand("cancel", "Cancel a queued or running job");
  cancel->add_option("job", job_id)->required();
  auto* jobs = app.add_subcommand("jobs", "List jobs, newest first");
  int limit = 0;
  std::string page_token;
  std::vector<std::string> states;
  jobs->add_option("--limit", limit, "Max jobs (default 50)");
  jobs->add_option("--page-token", page_token, "Next page token");
  jobs->add_option("--state", states, "Filter: queued,running,succeeded,failed,cancelled")->delimiter(',');

  CLI11_PARSE(app, argc, argv);
  const Format f = g.format == "json" ? Format::kJson : g.format == "csv" ? Format::kCsv : Format::kTable;
  Client c(g);

  if (info->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::ServerInfo resp;
    auto st = c.stub().GetServerInfo(&ctx, v1::GetServerInfoRequest(), &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderServerInfo(resp, f, std::cout);
    return 0;
  }
  if (models->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::ListModelsResponse resp;
    auto st = c.stub().ListModels(&ctx, v1::ListModelsRequest(), &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderModels(resp, f, std::cout);
    return 0;
  }
  if (model->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::GetModelRequest req;
    req.set_name(model_name);
    v1::ModelInfo resp;
    auto st = c.stub().GetModel(&ctx, req, &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderModel(resp, f, std::cout);
    return 0;
  }
  if (datasets->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::ListDatasetsResponse resp;
    auto st = c.stub().ListDatasets(&ctx, v1::ListDatasetsRequest(), &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderDatasets(resp, f, std::cout);
    return 0;
  }
  if (health->parsed()) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(wait * 1000));
    for (;;) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      grpc::health::v1::HealthCheckRequest req;
      grpc::health::v1::HealthCheckResponse resp;
      auto st = c.health().Check(&ctx, req, &resp);
      const bool serving = st.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
      if (serving || std::chrono::steady_clock::now() >= until) {
        std::cout << (st.ok() ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status())
                              : "UNREACHABLE: " + st.error_message())
                  << "\n";
        return serving ? 0 : 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  if (run->parsed() || submit->parsed()) {
    auto spec = sinkscope::client::BuildJobSpec(run->parsed() ? jf : sf);
    if (!spec.ok()) {
      std::cerr << "sinkscope: " << spec.status().message() << "\n";
      return 2;
    }
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::SubmitJobRequest req;
    *req.mutable_spec() = *spec;
    v1::SubmitJobResponse resp;
    auto st = c.stub().SubmitJob(&ctx, req, &resp);
    if (!st.ok()) return RpcError(st);
    if (submit->parsed() || detach) {
      if (f == Format::kJson) std::cout << sinkscope::client::ToJson(resp) << "\n";
      else std::cout << resp.job_id() << "\n";
      return 0;
    }
    return Watch(c, g, f, resp.job_id(), 0);
  }
  if (watch->parsed()) return Watch(c, g, f, job_id, from_seq);
  if (get->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::GetJobRequest req;
    req.set_job_id(job_id);
    v1::Job resp;
    auto st = c.stub().GetJob(&ctx, req, &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderJob(resp, f, std::cout);
    return 0;
  }
  if (cancel->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::CancelJobRequest req;
    req.set_job_id(job_id);
    v1::CancelJobResponse resp;
    auto st = c.stub().CancelJob(&ctx, req, &resp);
    if (!st.ok()) return RpcError(st);
    std::cout << sinkscope::client::StateName(resp.state()) << "\n";
    return 0;
  }
  if (jobs->parsed()) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    v1::ListJobsRequest req;
    req.set_limit(limit);
    req.set_page_token(page_token);
    for (auto s : states) {
      for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      v1::JobState js;
      if (!v1::JobState_Parse("JOB_STATE_" + s, &js)) {
        std::cerr << "sinkscope: --state: unknown state '" << s << "'\n";
        return 2;
      }
      req.add_states(js);
    }
    v1::ListJobsResponse resp;
    auto st = c.stub().ListJobs(&ctx, req, &resp);
    if (!st.ok()) return RpcError(st);
    sinkscope::client::RenderJobs(resp, f, std::cout);
    return 0;
  }
  return 2;
}
