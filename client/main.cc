// sinkscope: command-line client for sinkscoped (gRPC only; no LibTorch).
//   sinkscope models
//   sinkscope run -m tiny-rope,tiny-drope --dataset brown-heldout --phase
//   sinkscope run -m tiny-rope --text "The quick brown fox" --sink-rate --format json
// Exit status: 0 ok, 1 job failed or was cancelled, 2 usage or RPC error.
#include <CLI/CLI.hpp>
#include <iostream>

#include "client/commands.h"
#include "client/job_flags.h"
#include "client/render.h"

namespace sinkscope::client {
namespace {
using Stub = v1::Sinkscope::Stub;

// Declares the command line, then runs the one subcommand given; returns the exit status.
int Main(int argc, char** argv) {
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

  JobFlags jf;
  bool detach = false;
  auto* run = app.add_subcommand("run", "Submit a job and stream its results");
  AddJobFlags(run, &jf);
  run->add_flag("--detach", detach, "Print the job id and return without streaming");
  auto* submit = app.add_subcommand("submit", "Submit a job and print its id");
  JobFlags sf;
  AddJobFlags(submit, &sf);

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

  if (info->parsed()) return Unary(c, &Stub::GetServerInfo, v1::GetServerInfoRequest(), Print(RenderServerInfo, f));
  if (models->parsed()) return Unary(c, &Stub::ListModels, v1::ListModelsRequest(), Print(RenderModels, f));
  if (model->parsed()) {
    v1::GetModelRequest req;
    req.set_name(model_name);
    return Unary(c, &Stub::GetModel, req, Print(RenderModel, f));
  }
  if (datasets->parsed()) return Unary(c, &Stub::ListDatasets, v1::ListDatasetsRequest(), Print(RenderDatasets, f));
  if (health->parsed()) return Health(c, wait);
  if (run->parsed()) return Submit(c, g, f, jf, detach);
  if (submit->parsed()) return Submit(c, g, f, sf, /*detach=*/true);
  if (watch->parsed()) return Watch(c, g, f, job_id, from_seq);
  if (get->parsed()) {
    v1::GetJobRequest req;
    req.set_job_id(job_id);
    return Unary(c, &Stub::GetJob, req, Print(RenderJob, f));
  }
  if (cancel->parsed()) {
    v1::CancelJobRequest req;
    req.set_job_id(job_id);
    return Unary(c, &Stub::CancelJob, req, [](const v1::CancelJobResponse& resp) {
      std::cout << StateName(resp.state()) << "\n";
      return 0;
    });
  }
  if (jobs->parsed()) return ListJobs(c, f, limit, page_token, states);
  return 2;
}

}  // namespace
}  // namespace sinkscope::client

int main(int argc, char** argv) { return sinkscope::client::Main(argc, argv); }
