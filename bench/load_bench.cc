// sinkscope-load-bench: a bounded load test of the whole server. An in-process sinkscoped (the shipped tiny pair,
// deploy/demo-models.yaml) on 127.0.0.1, in memory or on a --state_dir (SQLite), and C concurrent gRPC clients
// that each submit a small job, stream it to its Finished event and repeat, until N jobs are done or the time
// bound passes. Reports jobs/s and the submit-to-Finished latency (p50, p90, p99, max) for three mixes:
//   run    every job different and no_cache: real forwards through the queue (the worker is the bottleneck)
//   cache  the same job again and again: answered from the result cache (the RPC and store path)
//   bad    invalid jobs (rejected at submit): the cost of saying no
// and writes <out>/load.md and <out>/load.json.
//
// Usage: sinkscope-load-bench [--config=deploy/demo-models.yaml] [--jobs=200] [--clients=8] [--max_seconds=120]
//                             [--state_dir=] (empty: a fresh temporary directory; "memory": no store)
//                             [--threads=2] [--out=bench/results]
#include <grpcpp/grpcpp.h>
#include <sys/utsname.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/model/runtime.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using sinkscope::bench::Clock;
using sinkscope::bench::Seconds;

// A 2-prompt sink-rate + residual job on tiny-rope; `variant` changes the text so no two are the same.
v1::SubmitJobRequest Job(const std::string& mix, int64_t variant) {
  v1::SubmitJobRequest r;
  v1::JobSpec& s = *r.mutable_spec();
  s.add_models("tiny-rope");
  auto* texts = s.mutable_inputs()->mutable_texts();
  const std::string n = mix == "cache" ? "" : absl::StrCat(" ", variant);
  texts->add_texts("The jury said it did find that the city executive committee had over-all charge" + n);
  texts->add_texts("It recommended that Fulton legislators act to have these laws studied and revised" + n);
  s.add_analyses()->mutable_sink_rate();
  s.add_analyses()->mutable_residual_stats();
  s.set_no_cache(mix == "run");
  if (mix == "bad") s.mutable_analyses(0)->mutable_sink_rate()->set_tau(2.0);  // out of [0, 1]
  return r;
}

struct MixResult {
  std::string mix;
  int64_t ok = 0, failed = 0;
  double wall = 0;
  std::vector<double> latency;  // seconds, submit to Finished (bad: submit to the refusal)
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

MixResult RunMix(const std::string& address, const std::string& mix, int64_t jobs, int64_t clients,
                 double max_seconds) {
  MixResult r;
  r.mix = mix;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      // One channel per client: what separate researchers' processes would have.
      grpc::ChannelArguments args;
      args.SetInt("grpc.use_local_subchannel_pool", 1);
      auto stub = v1::Sinkscope::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      for (int64_t i; (i = next++) < jobs && Seconds(start, Clock::now()) < max_seconds;) {
        const Clock::time_point t0 = Clock::now();
        grpc::ClientContext ctx;
        v1::SubmitJobResponse resp;
        const grpc::Status st = stub->SubmitJob(&ctx, Job(mix, i), &resp);
        bool ok = st.ok();
        if (ok) {
          grpc::ClientContext sctx;
          v1::StreamJobRequest sr;
          sr.set_job_id(resp.job_id());
          auto reader = stub->StreamJob(&sctx, sr);
          v1::JobEvent ev;
          ok = false;
          while (reader->Read(&ev))
            if (ev.has_finished()) ok = ev.finished().state() == v1::JOB_STATE_SUCCEEDED;
          ok &= reader->Finish().ok();
        } else if (mix == "bad") {
          ok = st.error_code() == grpc::StatusCode::INVALID_ARGUMENT;  // the expected refusal
        }
        const double dt = Seconds(t0, Clock::now());
        std::lock_guard<std::mutex> l(mu);
        (ok ? r.ok : r.failed)++;
        r.latency.push_back(dt);
      }
    });
  }
  for (auto& t : threads) t.join();
  r.wall = Seconds(start, Clock::now());
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  sinkscope::model::TuneMallocForTensors();
  auto flags = sinkscope::bench::ParseFlags(argc, argv,
                                            {{"config", "deploy/demo-models.yaml"},
                                             {"jobs", "200"},
                                             {"clients", "8"},
                                             {"max_seconds", "120"},
                                             {"state_dir", ""},
                                             {"threads", "2"},
                                             {"out", SINKSCOPE_BENCH_RESULTS}},
                                            "sinkscope-load-bench");
  const int64_t jobs = sinkscope::bench::IntFlag(flags, "jobs");
  const int64_t clients = sinkscope::bench::IntFlag(flags, "clients");
  const int64_t max_seconds = sinkscope::bench::IntFlag(flags, "max_seconds");
  auto cfg = sinkscope::server::LoadServerConfig(flags["config"]);
  if (!cfg.ok()) {
    std::cerr << cfg.status() << "\n";
    return 2;
  }
  std::string state_dir = flags["state_dir"];
  bool temp_state = false;
  if (state_dir.empty()) {
    state_dir = (fs::temp_directory_path() / absl::StrCat("sinkscope-load-", getpid())).string();
    temp_state = true;
  } else if (state_dir == "memory") {
    state_dir.clear();
  }
  sinkscope::server::ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.wait_for_models = true;
  o.compute_threads = static_cast<int32_t>(sinkscope::bench::IntFlag(flags, "threads"));
  o.state_dir = state_dir;
  cfg->max_queued_jobs = static_cast<int32_t>(std::max<int64_t>(cfg->max_queued_jobs, clients));
  const std::string load_before = sinkscope::bench::LoadAvg();
  std::vector<MixResult> results;
  {
    auto server = sinkscope::server::Server::Start(o, *cfg);
    if (!server.ok()) {
      std::cerr << server.status() << "\n";
      return 1;
    }
    for (const char* mix : {"run", "cache", "bad"}) {
      results.push_back(RunMix((*server)->address(), mix, jobs, clients, static_cast<double>(max_seconds)));
      const MixResult& r = results.back();
      std::cout << absl::StrFormat("%-5s %4d ok %3d failed in %6.2f s: %7.1f jobs/s, p50 %.1f ms, p99 %.1f ms\n",
                                   r.mix, r.ok, r.failed, r.wall, static_cast<double>(r.ok + r.failed) / r.wall,
                                   1e3 * Percentile(r.latency, 0.5), 1e3 * Percentile(r.latency, 0.99));
    }
    (*server)->Shutdown(1.0);
  }
  if (temp_state) fs::remove_all(state_dir);

  utsname u{};
  uname(&u);
  const std::string env =
      absl::StrFormat("%s, %d cores, %s %s; engine threads %s; store %s; load %s -> %s", sinkscope::bench::CpuModel(),
                      std::thread::hardware_concurrency(), u.sysname, u.release, flags["threads"],
                      state_dir.empty() ? "in memory" : "SQLite (WAL) on local disk", load_before,
                      sinkscope::bench::LoadAvg());
  nlohmann::json j = {{"environment", env}, {"clients", clients}, {"jobs_per_mix", jobs}, {"mixes", nlohmann::json::array()}};
  std::ostringstream md;
  md << "# Load test: sinkscope-load-bench\n\n"
     << "In-process sinkscoped with the shipped tiny pair, " << clients << " concurrent gRPC clients (one channel "
     << "each), up to " << jobs << " jobs per mix, each submitted then streamed to its Finished event. Latency is "
     << "submit to Finished. `run`: every job different and `no_cache` (2 prompts, sink rate + residual stats on "
     << "tiny-rope: one packed forward); `cache`: one job repeated, answered from the result cache; `bad`: an "
     << "invalid job, refused at submit.\n\n"
     << "Environment: " << env << "\n\n"
     << "| mix | jobs ok | failed | wall s | jobs/s | p50 ms | p90 ms | p99 ms | max ms |\n"
     << "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const MixResult& r : results) {
    const double rate = static_cast<double>(r.ok + r.failed) / r.wall;
    md << absl::StrFormat("| %s | %d | %d | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", r.mix, r.ok, r.failed,
                          r.wall, rate, 1e3 * Percentile(r.latency, 0.5), 1e3 * Percentile(r.latency, 0.9),
                          1e3 * Percentile(r.latency, 0.99), 1e3 * Percentile(r.latency, 1.0));
    j["mixes"].push_back({{"mix", r.mix},
                          {"ok", r.ok},
                          {"failed", r.failed},
                          {"wall_seconds", r.wall},
                          {"jobs_per_second", rate},
                          {"p50_ms", 1e3 * Percentile(r.latency, 0.5)},
                          {"p90_ms", 1e3 * Percentile(r.latency, 0.9)},
                          {"p99_ms", 1e3 * Percentile(r.latency, 0.99)},
                          {"max_ms", 1e3 * Percentile(r.latency, 1.0)}});
  }
  fs::create_directories(flags["out"]);
  std::ofstream(fs::path(flags["out"]) / "load.md") << md.str();
  std::ofstream(fs::path(flags["out"]) / "load.json") << j.dump(2) << "\n";
  std::cout << "wrote " << (fs::path(flags["out"]) / "load.md").string() << "\n";
  int64_t failed = 0;
  for (const MixResult& r : results) failed += r.failed;
  return failed == 0 ? 0 : 1;
}
