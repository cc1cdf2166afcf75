// sinkscope-bench: forward-pass throughput of the Llama engine on a random in-memory model.
//
// For each compute dtype (float32, bfloat16) and sequence length T (512, 2048, 4096) it reports
//   tokens/s            = T / best forward wall time of N runs (return_logits=false, return_target_nll=true,
//                         chunk 512: the perplexity/analysis path); the median is reported too. Best-of-N is the
//                         robust statistic on a shared machine where other jobs only ever slow a run down.
//   achieved GFLOP/s    = executed matmul FLOPs / time, where executed FLOPs count every GEMM the engine runs:
//                         per layer 2T·d·(H·hd + 2·Hkv·hd) + 2T·H·hd·d + 3·2T·d·I, attention 2·2·H·hd·Σ_chunks tq·q1
//                         (the chunked kernel computes each chunk against keys [0, q1)), lm_head 2(T-1)·d·V
//   % of peak           = achieved / measured 1024×1024 mm GFLOP/s of the same dtype and thread count
//   peak RSS            = VmHWM during the forward (reset through /proc/self/clear_refs before each forward), and
//                         its growth over the RSS before the forward
// Writes <out>/forward.md and <out>/forward.json.
//
// Usage: sinkscope-bench [--threads=2] [--out=bench/results] [--layers=4] [--hidden=256] [--heads=4]
//                        [--kv-heads=4] [--intermediate=688] [--vocab=4096] [--lengths=512,2048,4096]
//                        [--dtypes=float32,bfloat16] [--repeats=5] [--chunk=512] [--tune-malloc=1]
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <sys/resource.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench/bench_model.h"
#include "bench/bench_util.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "nlohmann/json.hpp"

namespace {

using sinkscope::model::LlamaConfig;
using sinkscope::bench::Clock;
using sinkscope::bench::CpuModel;
using sinkscope::bench::LoadAvg;
using sinkscope::bench::Median;
using sinkscope::bench::RandomWeights;
using sinkscope::bench::ResetPeakRss;
using sinkscope::bench::Seconds;
using sinkscope::bench::StatusKb;

// Process CPU time (user + system, all threads). Less sensitive than wall time to other jobs on a shared machine.
double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}


// Best-of-N 1024×1024 matmul rate.
double MatmulPeakGflops(at::ScalarType dt) {
  at::Tensor a = at::randn({1024, 1024}).to(dt), b = at::randn({1024, 1024}).to(dt);
  for (int i = 0; i < 3; ++i) (void)at::mm(a, b);
  double best = 1e30;
  for (int i = 0; i < 20; ++i) {
    auto t0 = Clock::now();
    at::Tensor c = at::mm(a, b);
    (void)c.data_ptr();
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return 2.0 * 1024 * 1024 * 1024 / best / 1e9;
}

// GEMM FLOPs the engine executes for one forward (see file comment).
double ForwardFlops(const LlamaConfig& c, int64_t T, int64_t chunk, bool logits) {
  const double d = c.hidden_size, qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
  const double I = c.intermediate_size, V = c.vocab_size;
  double per_layer = 2.0 * T * d * (qd + 2 * kvd) + 2.0 * T * qd * d + 3 * 2.0 * T * d * I;
  double attn = 0;
  if (chunk <= 0 || chunk > T) chunk = T;
  for (int64_t q0 = 0; q0 < T; q0 += chunk) {
    const int64_t q1 = std::min(q0 + chunk, T);
    attn += 2.0 * 2.0 * c.num_attention_heads * c.head_dim * static_cast<double>(q1 - q0) * q1;
  }
  return c.num_hidden_layers * (per_layer + attn) + 2.0 * (logits ? T : T - 1) * d * V;
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = sinkscope::bench::ParseFlags(
      argc, argv,
      {{"threads", "2"},   {"out", SINKSCOPE_BENCH_RESULTS}, {"layers", "4"},          {"hidden", "256"},
       {"heads", "4"},     {"kv-heads", "4"},                {"intermediate", "688"},  {"vocab", "4096"},
       {"lengths", "512,2048,4096"}, {"dtypes", "float32,bfloat16"}, {"repeats", "5"}, {"tune-malloc", "1"},
       {"chunk", "512"}},
      "sinkscope-bench");
  auto num = [&](const char* k) { return sinkscope::bench::IntFlag(flags, k); };
  const int threads = static_cast<int>(num("threads"));
  const bool tune_malloc = num("tune-malloc") != 0;
  const bool malloc_tuned = tune_malloc && sinkscope::model::TuneMallocForTensors();
  sinkscope::model::SetComputeThreads(threads);

  LlamaConfig c = sinkscope::bench::BenchConfig(num("layers"), num("hidden"), num("heads"), num("kv-heads"),
                                                num("intermediate"), num("vocab"), /*max_positions=*/0);
  const int64_t repeats = std::max<int64_t>(1, num("repeats")), chunk = num("chunk");
  std::vector<int64_t> lengths;
  for (absl::string_view s : absl::StrSplit(flags["lengths"], ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(s, &v) || v < 2) {
      std::cerr << "bad --lengths entry " << s << "\n";
      return 2;
    }
    lengths.push_back(v);
  }
  c.max_position_embeddings = *std::max_element(lengths.begin(), lengths.end());
  std::vector<std::string> dtypes = absl::StrSplit(flags["dtypes"], ',');

  utsname un{};
  uname(&un);
  nlohmann::json out;
  // Threading environment: with Debian's OpenBLAS (pthread) + LibTorch's OpenMP, OMP_WAIT_POLICY matters a lot
  // (spinning OpenMP workers steal the cores OpenBLAS's own threads need; see bench/README.md).
  nlohmann::json env = nlohmann::json::object();
  for (const char* k : {"OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOMP_SPINCOUNT"})
    env[k] = std::getenv(k) ? std::getenv(k) : "(unset)";
  const std::string load_before = LoadAvg();
  out["machine"] = {{"cpu", CpuModel()}, {"kernel", un.release}, {"threads", threads},
                    {"torch", sinkscope::model::TorchVersion()}, {"env", env},
                    {"malloc_tuned", malloc_tuned}};
  out["model"] = {{"layers", c.num_hidden_layers}, {"hidden", c.hidden_size}, {"heads", c.num_attention_heads},
                  {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
                  {"intermediate", c.intermediate_size}, {"vocab", c.vocab_size},
                  {"parameters", c.num_parameters()}};
  out["options"] = {{"return_logits", false}, {"return_target_nll", true}, {"attn_query_chunk", chunk},
                    {"repeats", repeats}};
  out["runs"] = nlohmann::json::array();
  std::map<std::string, double> peaks;
  std::cerr << absl::StrFormat("model: %d layers, d=%d, H=%d, I=%d, V=%d (%.2fM params), %d threads\n",
                               c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size,
                               c.vocab_size, c.num_parameters() / 1e6, threads);
  for (const std::string& dts : dtypes) {
    at::ScalarType dt;
    if (dts == "float32") dt = at::kFloat;
    else if (dts == "bfloat16") dt = at::kBFloat16;
    else {
      std::cerr << "unsupported dtype " << dts << " (float32 or bfloat16 on CPU)\n";
      return 2;
    }
    at::NoGradGuard no_grad;
    peaks[dts] = MatmulPeakGflops(dt);
    std::cerr << absl::StrFormat("%s 1024^2 mm peak: %.1f GFLOP/s\n", dts, peaks[dts]);
    auto model = sinkscope::model::LlamaModel::FromWeights(c, RandomWeights(c, dt), "random");
    if (!model.ok()) {
      std::cerr << model.status() << "\n";
      return 1;
    }
    sinkscope::model::ForwardOptions fo;
    fo.return_logits = false;
    fo.return_target_nll = true;
    fo.attn_query_chunk = chunk;
    at::manual_seed(1);
    {  // warm-up
      at::Tensor ids = at::randint(3, c.vocab_size, {std::min<int64_t>(256, lengths.front())}, at::kLong);
      if (!(*model)->Forward(ids, fo).ok()) return 1;
    }
    for (int64_t T : lengths) {
      at::Tensor ids = at::randint(3, c.vocab_size, {T}, at::kLong);
      std::vector<double> times, cpu_times;
      int64_t peak_kb = 0, grew_kb = 0;
      bool rss_ok = true;
      for (int64_t r = 0; r < repeats; ++r) {
        rss_ok &= ResetPeakRss();
        const int64_t rss0 = StatusKb("VmRSS:");
        auto t0 = Clock::now();
        const double c0 = CpuSeconds();
        auto res = (*model)->Forward(ids, fo);
        times.push_back(Seconds(t0, Clock::now()));
        cpu_times.push_back(CpuSeconds() - c0);
        if (!res.ok()) {
          std::cerr << res.status() << "\n";
          return 1;
        }
        const int64_t hwm = StatusKb("VmHWM:");
        peak_kb = std::max(peak_kb, hwm);
        grew_kb = std::max(grew_kb, hwm - rss0);
      }
      const double t = *std::min_element(times.begin(), times.end());
      const double t_med = Median(times);
      const double flops = ForwardFlops(c, T, chunk, false);
      const double gflops = flops / t / 1e9;
      nlohmann::json run = {{"dtype", dts},
                            {"T", T},
                            {"seconds_best", t},
                            {"seconds_median", t_med},
                            {"cpu_seconds_best", *std::min_element(cpu_times.begin(), cpu_times.end())},
                            {"seconds_all", times},
                            {"tokens_per_s", T / t},
                            {"gflop", flops / 1e9},
                            {"gflops", gflops},
                            {"mm_peak_gflops", peaks[dts]},
                            {"pct_of_peak", 100.0 * gflops / peaks[dts]},
                            {"peak_rss_mib", rss_ok ? peak_kb / 1024.0 : -1.0},
                            {"rss_growth_mib", rss_ok ? grew_kb / 1024.0 : -1.0}};
      out["runs"].push_back(run);
      std::cerr << absl::StrFormat("%-8s T=%-5d %8.3f s (cpu %6.3f s) %9.0f tok/s  %7.1f GFLOP/s (%4.1f%% of mm peak)  peak RSS %6.0f MiB (+%.0f)\n",
                                   dts, T, t, *std::min_element(cpu_times.begin(), cpu_times.end()), T / t, gflops, 100.0 * gflops / peaks[dts], peak_kb / 1024.0,
                                   grew_kb / 1024.0);
    }
  }
  out["mm_peak_gflops"] = peaks;
  out["machine"]["loadavg_before"] = load_before;
  out["machine"]["loadavg_after"] = LoadAvg();

  const std::string dir = flags["out"];
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/forward.json") << out.dump(2) << "\n";
  std::ofstream md(dir + "/forward.md");
  md << "# Forward benchmark (sinkscope-bench)\n\n";
  md << absl::StrFormat("Machine: %s, %d torch threads, LibTorch %s, Linux %s.\n", CpuModel(), threads,
                        sinkscope::model::TorchVersion(), un.release);
  md << "Environment:";
  for (const auto& [k, v] : env.items()) md << " " << k << "=" << v.get<std::string>();
  md << ". TuneMallocForTensors(): " << (malloc_tuned ? "on" : "off") << ". Load average (1/5/15 min) before: " << load_before << ", after: " << LoadAvg()
     << " (the machine is shared; other jobs inflate wall times).\n\n";
  md << absl::StrFormat(
      "Model: random Llama (RoPE), %d layers, d=%d, %d heads (head_dim %d), %d KV heads, FF %d, vocab %d "
      "(%.2fM parameters), built in memory.\n",
      c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.head_dim, c.num_key_value_heads,
      c.intermediate_size, c.vocab_size, c.num_parameters() / 1e6);
  md << absl::StrFormat(
      "Forward: return_logits=false, return_target_nll=true (the perplexity/analysis path), attn_query_chunk=%d, "
      "no hooks; best of %d runs after a warm-up (median in its own column).\n\n",
      chunk, repeats);
  md << "Matmul peak (best 1024x1024 `at::mm` of 20, same threads): ";
  for (const auto& [k, v] : peaks) md << absl::StrFormat("%s %.1f GFLOP/s; ", k, v);
  md << "\n\n| dtype | T | best (s) | median (s) | CPU s (best) | tokens/s | GFLOP/s | % of mm peak | peak RSS (MiB) | RSS growth (MiB) |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : out["runs"])
    md << absl::StrFormat("| %s | %d | %.3f | %.3f | %.3f | %.0f | %.1f | %.1f | %.0f | %.0f |\n", r["dtype"].get<std::string>(),
                          r["T"].get<int64_t>(), r["seconds_best"].get<double>(), r["seconds_median"].get<double>(),
                          r["cpu_seconds_best"].get<double>(),
                          r["tokens_per_s"].get<double>(),
                          r["gflops"].get<double>(), r["pct_of_peak"].get<double>(), r["peak_rss_mib"].get<double>(),
                          r["rss_growth_mib"].get<double>());
  md << "\nGFLOP/s counts the GEMMs the engine executes (projections, MLP, lm_head, and chunked attention QK^T and "
        "PV against keys [0, q1) per query chunk). In bfloat16 the attention scores are still computed in float32 "
        "(q, k cast up: docs/study.md §6.1), so bf16 runs compare a mixed workload against the bf16 mm peak. Peak RSS "
        "is the process VmHWM (reset through /proc/self/clear_refs before each forward) and includes the weights "
        "and LibTorch itself; growth is VmHWM minus VmRSS before the forward.\n";
  std::cerr << "wrote " << dir << "/forward.md and forward.json\n";
  return 0;
}
