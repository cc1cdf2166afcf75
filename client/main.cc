// sinkscope: command-line client for sinkscoped (gRPC only; no LibTorch). Reference: docs/client.md.
//   sinkscope models
//   sinkscope run -m tiny-rope,tiny-drope --dataset brown-heldout --truncate-to-context --phase --plot figures/
//   sinkscope batch examples/batch.jsonl --out runs/ --server a:50051,b:50051
// Global options go anywhere on the line. Exit status (exit_codes.h): 0 ok, 1 other error, 2 usage, 3 server
// unavailable or credentials refused, 4 job failed, 5 cancelled or interrupted.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "absl/strings/str_join.h"
#include "client/batch.h"
#include "client/commands.h"
#include "client/completion.h"
#include "client/interrupt.h"
#include "client/job_flags.h"
#include "client/plot.h"

namespace sinkscope::client {
namespace {
using Stub = v1::Sinkscope::Stub;

std::string Example(std::initializer_list<const char*> lines) {
  std::string s = "\nExample:\n";
  for (const char* l : lines) s += std::string("  ") + l + "\n";
  return s;
}

// Declares the command line, then runs the one subcommand given; returns the exit status.
int Main(int argc, char** argv) {
  CLI::App app{
      "sinkscope: measure attention sinks, massive activations and ablated perplexity on a sinkscoped "
      "server.\nOptions of this list may go before or after the command. Exit status: 0 ok, 1 other "
      "error, 2 usage,\n3 server unavailable or credentials refused, 4 job failed, 5 cancelled."};
  app.fallthrough();  // inherited by every subcommand: global options after the subcommand reach this app
  app.require_subcommand(1);
  Global g;
  app.add_option("-s,--server", g.server, "Server host:port (batch: a comma list, or a name with several addresses)")
      ->envname("SINKSCOPE_SERVER");
  app.add_option("-f,--format", g.format, "Output: table | json (JSON lines) | csv (long format)")
      ->check(CLI::IsMember({"table", "json", "csv"}));
  app.add_option("--timeout", g.timeout, "Deadline in seconds for unary calls (default 30)");
  app.add_option("--token", g.token, "Bearer token, if the server requires one")->envname("SINKSCOPE_TOKEN");
  app.add_option("--token-file", g.token_file, "File holding the bearer token")->envname("SINKSCOPE_TOKEN_FILE");
  app.add_option("--tls-ca", g.tls_ca, "CA certificates (PEM): connect with TLS; without it, plaintext")
      ->envname("SINKSCOPE_TLS_CA");
  app.add_flag("-q,--quiet", g.quiet, "No progress line or per-job lines on stderr");
  app.add_flag("--wide", g.wide, "Tables: every column (default: fit 100 columns). CSV: one column per metric");

  auto* info = app.add_subcommand("info", "Server version, devices, limits, queue");
  info->footer(Example({"sinkscope info", "sinkscope -f json info | jq .limits"}));
  auto* models = app.add_subcommand("models", "List models (state, positional scheme, size, dtype, digests)");
  models->footer(Example({"sinkscope models", "sinkscope -f csv models"}));
  std::string model_name;
  auto* model = app.add_subcommand("model", "Show one model, with its hook points");
  model->add_option("name", model_name, "Model name")->required();
  model->footer(Example({"sinkscope model tiny-drope"}));
  auto* datasets = app.add_subcommand("datasets", "List built-in datasets");
  datasets->footer(Example({"sinkscope datasets"}));
  double wait = 0;
  auto* health = app.add_subcommand("health", "grpc.health.v1 status: exit 0 when SERVING, 3 otherwise");
  health->add_option("--wait", wait, "Wait up to this many seconds for the server to listen and be SERVING");
  health->footer(Example({"sinkscope health --wait 300 && sinkscope models"}));

  JobFlags jf;
  bool detach = false;
  WatchOptions wo;
  auto* run = app.add_subcommand("run", "Submit a job and stream its results (Ctrl-C cancels it)");
  AddJobFlags(run, &jf);
  run->add_flag("--detach", detach, "Print the job id and return without streaming");
  run->add_option("--save", wo.save, "Also write every event as a JSON line to FILE (for `sinkscope plot`)");
  run->add_option("--plot", wo.plot_dir, "Write the study's figures (PNG, SVG) to DIR when the job ends");
  run->footer(Example(
      {"sinkscope run -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts 32 --phase \\",
       "    --save phase.jsonl --plot figures/",
       "sinkscope run -m tiny-rope -t \"The quick brown fox.\" --sink-rate --tau 0.3 --per-prompt",
       "sinkscope run --spec examples/specs/qk_disruption_literary.json",
       "sinkscope -f csv run -m tiny-drope -d study-massive-comparison --truncate-to-context --massive > m.csv"}));
  JobFlags sf;
  auto* submit = app.add_subcommand("submit", "Submit a job and print its id (then: watch, get, cancel)");
  AddJobFlags(submit, &sf);
  submit->footer(
      Example({"id=$(sinkscope submit -m tiny-rope,tiny-drope --dataset brown-heldout --truncate-to-context --phase)",
               "sinkscope watch \"$id\""}));

  std::string job_id;
  uint64_t from_seq = 0;
  WatchOptions ww;
  auto* watch = app.add_subcommand("watch", "Stream a job's events (replays stored ones first; Ctrl-C stops watching)");
  watch->add_option("job", job_id, "Job id")->required();
  watch->add_option("--from", from_seq, "First event seq");
  watch->add_option("--save", ww.save, "Also write every event as a JSON line to FILE");
  watch->add_option("--plot", ww.plot_dir, "Write the study's figures to DIR when the job ends");
  watch->footer(
      Example({"sinkscope watch j-0123456789abcdef", "sinkscope -f json watch j-0123456789abcdef > events.jsonl"}));
  auto* get = app.add_subcommand("get", "Show a job's record and summary");
  get->add_option("job", job_id, "Job id")->required();
  get->footer(Example({"sinkscope get j-0123456789abcdef", "sinkscope -f csv get j-0123456789abcdef"}));
  auto* cancel = app.add_subcommand("cancel", "Cancel a queued or running job (exit 1 if it had already finished)");
  cancel->add_option("job", job_id, "Job id")->required();
  cancel->footer(Example({"sinkscope cancel j-0123456789abcdef"}));
  auto* jobs = app.add_subcommand("jobs", "List jobs, newest first");
  int limit = 0;
  std::string page_token;
  std::vector<std::string> states;
  jobs->add_option("--limit", limit, "Max jobs (default 50)");
  jobs->add_option("--page-token", page_token, "Next page token");
  jobs->add_option("--state", states, "Filter: queued,running,succeeded,failed,cancelled,interrupted")->delimiter(',');
  jobs->footer(Example({"sinkscope jobs --state running,queued"}));

  std::vector<std::string> plot_files;
  std::string plot_out;
  auto* plot = app.add_subcommand("plot", "Draw the study's figures (PNG and SVG, with gnuplot) from saved events");
  plot->add_option("results", plot_files, "JSON-lines event files (run --save, -f json run, batch DIR/jobs/*.jsonl)")
      ->required()
      ->check(CLI::ExistingFile);
  plot->add_option("--out", plot_out, "Directory for the figures")->required();
  plot->footer(
      Example({"sinkscope run -m tiny-rope,tiny-drope -d brown-heldout --max-prompts 32 --phase --save phase.jsonl",
               "sinkscope plot phase.jsonl --out figures/"}));

  BatchOptions bo;
  auto* batch = app.add_subcommand("batch", "Run many jobs over one or more servers; resumable (docs/client.md)");
  batch->add_option("jobs", bo.jobs_file, "Jobs file: JSON lines (JobSpec or CLI flags per line) or YAML")
      ->required()
      ->check(CLI::ExistingFile);
  batch->add_option("--out", bo.out_dir, "Directory for results and the manifest (rerun with it to resume)")
      ->required();
  batch->add_option("--concurrency", bo.concurrency, "Jobs in flight at once (default 2 per server)")
      ->check(CLI::PositiveNumber);
  batch->add_flag("--detach", bo.detach, "On Ctrl-C leave submitted jobs running (a rerun re-attaches)");
  batch->footer(Example({"sinkscope batch examples/batch.jsonl --out runs/ --server gpu1:50051,gpu2:50051",
                         "sinkscope batch examples/batch.yaml --out runs/    # again: resumes"}));

  std::string shell = "bash";
  auto* completion = app.add_subcommand("completion", "Print the shell completion script");
  completion->add_option("shell", shell, "Shell (bash)")->check(CLI::IsMember({"bash"}));
  completion->footer(Example({"source <(sinkscope completion bash)"}));

  // Set last: a subcommand copies its parent's footer when it is created.
  app.footer(
      Example({"sinkscope health --wait 60 && sinkscope models",
               "sinkscope run -m tiny-rope,tiny-drope -d brown-heldout --truncate-to-context --phase --plot figures/",
               "sinkscope batch examples/batch.jsonl --out runs/ --server a:50051,b:50051"}) +
      "\nEvery command: sinkscope COMMAND --help. Reference: docs/client.md; examples: examples/README.md.\n");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);                   // --help
    if (app.get_subcommands().empty() && app.remaining_size() > 0) {  // a word that names no command
      std::vector<std::string> names;
      for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; }))
        names.push_back(s->get_name());
      std::cerr << "sinkscope: unknown command '" << app.remaining().front()
                << "' (commands: " << absl::StrJoin(names, ", ") << ")\n";
      return kExitUsage;
    }
    std::cerr << "sinkscope: " << e.what() << "\nRun 'sinkscope --help' or 'sinkscope COMMAND --help'.\n";
    return kExitUsage;
  }

  const RenderOptions ro = g.render();
  const bool progress = !g.quiet && isatty(STDERR_FILENO);
  if (completion->parsed()) {
    std::cout << BashCompletion(app);
    return kExitOk;
  }
  if (plot->parsed()) {
    std::vector<v1::JobEvent> events;
    if (int rc = ReadEventFiles(plot_files, &events, std::cerr); rc != 0) return rc;
    return PlotEvents(events, plot_out, std::cerr);
  }
  absl::StatusOr<Credentials> cred = LoadCredentials(g);
  if (!cred.ok()) {
    std::cerr << "sinkscope: " << cred.status().message() << "\n";
    return kExitUsage;
  }
  const std::vector<std::string> servers = SplitServers(g.server);
  if (servers.empty()) {
    std::cerr << "sinkscope: --server: empty\n";
    return kExitUsage;
  }
  if (batch->parsed()) {
    bo.progress = progress;
    bo.quiet = g.quiet;
    bo.render = ro;
    return RunBatch(*cred, servers, bo);
  }
  // Every other command talks to one server: the first of a list.
  Client c(*cred, servers[0]);
  if (info->parsed()) return Unary(c, &Stub::GetServerInfo, v1::GetServerInfoRequest(), Print(RenderServerInfo, ro));
  if (models->parsed()) return Unary(c, &Stub::ListModels, v1::ListModelsRequest(), Print(RenderModels, ro));
  if (model->parsed()) {
    v1::GetModelRequest req;
    req.set_name(model_name);
    return Unary(c, &Stub::GetModel, req, Print(RenderModel, ro));
  }
  if (datasets->parsed()) return Unary(c, &Stub::ListDatasets, v1::ListDatasetsRequest(), Print(RenderDatasets, ro));
  if (health->parsed()) return Health(c, wait);
  if (run->parsed() || submit->parsed()) {
    absl::StatusOr<v1::JobSpec> spec = BuildJobSpec(run->parsed() ? jf : sf);
    if (!spec.ok()) {
      std::cerr << "sinkscope: " << spec.status().message() << "\n";
      return kExitUsage;
    }
    wo.render = ro;
    wo.progress = progress;
    wo.cancel_on_interrupt = true;
    return Submit(c, wo, *spec, detach || submit->parsed());
  }
  if (watch->parsed()) {
    ww.render = ro;
    ww.progress = progress;
    return Watch(c, ww, job_id, from_seq);
  }
  if (get->parsed()) {
    v1::GetJobRequest req;
    req.set_job_id(job_id);
    return Unary(c, &Stub::GetJob, req, Print(RenderJob, ro));
  }
  if (cancel->parsed()) return Cancel(c, ro, job_id);
  if (jobs->parsed()) return ListJobs(c, ro, limit, page_token, states);
  return kExitUsage;
}

}  // namespace
}  // namespace sinkscope::client

int main(int argc, char** argv) {
  sinkscope::client::InstallInterruptHandling();  // before any gRPC thread exists
  return sinkscope::client::Main(argc, argv);
}
