// sinkscoped: the sinkscope analysis server.
//   sinkscoped --config deploy/demo-models.yaml --listen 127.0.0.1:50051
// Stops gracefully on SIGINT/SIGTERM: no new jobs, running jobs cancelled at a layer boundary, streams closed
// with their Finished event.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/model/runtime.h"
#include "server/config.h"
#include "server/server.h"

ABSL_FLAG(std::string, config, "", "Path to the server YAML config (models, datasets_dir, limits). Required.");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "host:port to listen on (port 0 = any free port).");
ABSL_FLAG(int32_t, threads, 0, "Intra-op compute threads for the engine (0 = all cores).");
ABSL_FLAG(std::string, log_level, "info", "trace|debug|info|warn|error");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound port to this file once listening.");
ABSL_FLAG(std::string, metrics_listen, "", "host:port for the Prometheus /metrics endpoint (empty = off), e.g. 127.0.0.1:9464.");
ABSL_FLAG(double, shutdown_grace, 5.0, "Seconds in-flight RPCs get to finish at shutdown.");

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
  absl::SetProgramUsageMessage("sinkscope analysis server. Usage: sinkscoped --config FILE [--listen HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  if (absl::GetFlag(FLAGS_config).empty()) {
    std::cerr << "sinkscoped: --config is required (see deploy/demo-models.yaml)\n";
    return 2;
  }
  // Block the stop signals in every thread; the main thread waits for them with sigwait.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
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
  auto server = sinkscope::server::Server::Start(opts, *cfg);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  if (const std::string pf = absl::GetFlag(FLAGS_port_file); !pf.empty()) {
    FILE* f = std::fopen(pf.c_str(), "w");
    if (f) {
      std::fprintf(f, "%d\n", (*server)->port());
      std::fclose(f);
    }
  }
  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("received {}", sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  return 0;
}
