// sinkscoped: the sinkscope analysis server.
//   sinkscoped --config deploy/demo-models.yaml --listen 127.0.0.1:50051
// Stops gracefully on SIGINT/SIGTERM: no new jobs, running jobs cancelled at a layer boundary (with --state_dir
// they are INTERRUPTED and run again at the next start), streams closed. SIGHUP re-reads --tokens_file.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "common/model/runtime.h"
#include "server/config.h"
#include "server/log.h"
#include "server/server.h"

ABSL_FLAG(std::string, config, "", "Path to the server YAML config (models, datasets_dir, limits). Required.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "host:port to listen on (port 0 = any free port).");
ABSL_FLAG(int32_t, threads, 0, "Intra-op compute threads for the engine (0 = all cores).");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");
ABSL_FLAG(std::string, log_format, "text",
          "text | json (one JSON object per line; each job transition carries job, state, principal, models, "
          "durations and outcome).");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound port to this file once listening.");
ABSL_FLAG(std::string, metrics_listen, "", "host:port for the Prometheus /metrics endpoint (empty = off), e.g. 127.0.0.1:9464.");
ABSL_FLAG(double, shutdown_grace, 5.0, "Seconds in-flight RPCs get to finish at shutdown.");
ABSL_FLAG(std::string, state_dir, "",
          "Directory for durable jobs (SQLite: records, events, result cache); empty = in memory.");
ABSL_FLAG(std::string, tokens_file, "",
          "YAML of Bearer tokens (principal, role user|admin, token or sha256); empty = no auth, loopback only.");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (chain) for TLS; with --tls_key.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: require client certificates it signed (mutual TLS).");
ABSL_FLAG(bool, insecure_allow_remote, false,
          "Allow a non-loopback --listen without --tokens_file (anyone who reaches the port can use the server).");

int main(int argc, char** argv) {
  // libgomp reads OMP_WAIT_POLICY when it is loaded, before main. Spinning OpenMP threads starve OpenBLAS's own
  // threads and make fp32 forwards ~2x slower (bench/README.md), so re-exec once with the passive policy unless the
  // operator chose one.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // only returns on failure: continue with the default policy
  }
  // Keep large tensor allocations in the heap instead of fresh mmaps (page faults dominated T=4096 forwards).
  sinkscope::model::TuneMallocForTensors();
  absl::SetProgramUsageMessage(
      "sinkscope analysis server: keeps models loaded and runs jobs for sinkscope clients.\n"
      "Usage: sinkscoped --config FILE.yaml [--listen HOST:PORT] [--tokens_file FILE] [--tls_cert F --tls_key F]\n"
      "Example: sinkscoped --config deploy/demo-models.yaml --listen 127.0.0.1:50051\n"
      "Configuration keys and operations: docs/operations.md");
  // --help lists this binary's flags (absl's default filter expects a source file named after the binary).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) { return absl::StrContains(file, "server/main.cc"); };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  if (absl::Status st = sinkscope::server::SetLogFormat(absl::GetFlag(FLAGS_log_format)); !st.ok()) {
    std::cerr << "sinkscoped: " << st.message() << "\n";
    return 2;
  }

  if (absl::GetFlag(FLAGS_config).empty()) {
    std::cerr << "sinkscoped: --config is required (see deploy/demo-models.yaml)\n";
    return 2;
  }
  // Block the stop signals in every thread; the main thread waits for them with sigwait.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);  // reload --tokens_file
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  auto cfg = sinkscope::server::LoadServerConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) {
    spdlog::error("{}", cfg.status().ToString());
    return 2;
  }
  sinkscope::server::ServerOptions opts;
  opts.listen = absl::GetFlag(FLAGS_listen);
  opts.compute_threads = absl::GetFlag(FLAGS_threads);
  opts.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  opts.state_dir = absl::GetFlag(FLAGS_state_dir);
  opts.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  opts.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  opts.tls_key = absl::GetFlag(FLAGS_tls_key);
  opts.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  opts.insecure_allow_remote = absl::GetFlag(FLAGS_insecure_allow_remote);
  auto server = sinkscope::server::Server::Start(opts, *cfg);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    // 2: the configuration is wrong (tokens file, TLS files, listen policy): restarting will not help (the systemd
    // unit does not retry it); 1: anything else, e.g. a port in use, which a restart may cure.
    const absl::StatusCode c = server.status().code();
    return c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kNotFound ||
                   c == absl::StatusCode::kFailedPrecondition || c == absl::StatusCode::kPermissionDenied
               ? 2
               : 1;
  }
  if (const std::string pf = absl::GetFlag(FLAGS_port_file); !pf.empty()) {
    FILE* f = std::fopen(pf.c_str(), "w");
    if (f) {
      std::fprintf(f, "%d\n", (*server)->port());
      std::fclose(f);
    }
  }
  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGHUP) break;
    if (absl::Status st = (*server)->ReloadTokens(); !st.ok())
      spdlog::error("SIGHUP: tokens not reloaded, the previous ones stay in use: {}", st.ToString());
  }
  spdlog::info("received {}", sig == SIGINT ? "SIGINT" : "SIGTERM");
  const bool loading = !(*server)->registry().loading_done();
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  if (loading) {
    // A model is still loading (perhaps stalled on a slow file system): its thread cannot be interrupted, and
    // running static destructors under it could crash. Exit now; nothing is left to save.
    spdlog::info("exiting with a model load still in progress");
    spdlog::shutdown();
    std::_Exit(0);
  }
  return 0;
}
