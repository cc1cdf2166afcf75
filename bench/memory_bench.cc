// sinkscope-memory-bench: what layer-major execution costs in memory, for long prompts. For each prompt length T
// (512 and 4096 by default) a random in-memory model runs the study's phase job (sink rate, massive Q/K/V, BOS
// residual stats, matrix entropy, perplexity with the BOS-MLP ablation at the spike layer: prefix reuse) over
// N = tokens / T random prompts, once per residual memory budget (RunLimits.residual_memory_bytes):
//   1 B    every forward a wave of its own: prompt-major order, nothing kept for reuse;
//   0      no budget: one wave, the spike layer's residual kept and reused;
//   half   a budget of half the job's residual streams: two waves, partial layer events.
// Each (T, budget) runs in a fresh process (this binary re-executed with --child), so that one run's heap (kept by
// TuneMallocForTensors) does not hide the next one's peak. Reported per run:
//   peak growth     = VmHWM during the job − VmRSS before it (model loaded, plan built; VmHWM reset through
//                     /proc/self/clear_refs), the memory the job itself needed at its peak;
//   live at events  = the most malloc had handed out (mallinfo2: in use, heap holes excluded) at any event of the
//                     job — layer boundaries, progress, perplexities — less what it had before the job;
//   carried         = the planner's ResidualBytes for the largest wave (what the wave carries between layers);
//   forward         = the planner's ForwardBytes for the largest pack (one forward's activations at its peak);
//   the job's time (cold, and warm: a second run), the first and last final layer event of the warm run, waves,
//   layers computed, and the largest relative difference of any number from the prompt-major run.
// Writes <out>/<name>.md and <name>.json.
//
// Usage: sinkscope-memory-bench [--lengths=512,4096] [--tokens=16384] [--budgets=1,0,half] [--layers=4]
//                               [--hidden=512] [--heads=8] [--intermediate=1376] [--vocab=4096]
//                               [--pack-tokens=4096] [--threads=2] [--tune-malloc=1] [--out=bench/results]
//                               [--name=memory]
// --tune-malloc=1 runs with the server's malloc settings (model::TuneMallocForTensors: freed memory stays in the
// heap, so peaks include fragmentation); 0 with glibc's defaults (large blocks mmapped and returned at once).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_jobs.h"
#include "bench/bench_model.h"
#include "bench/bench_report.h"
#include "bench/bench_util.h"
#include "common/job/packing.h"
#include "common/job/plan.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "nlohmann/json.hpp"

namespace {

namespace job = sinkscope::job;
namespace bench = sinkscope::bench;
constexpr double kMiB = 1 << 20;

// N prompts of T tokens: BOS then ids drawn uniformly from [3, vocab), seeded.
std::vector<std::vector<int32_t>> RandomPrompts(int64_t n, int64_t T, int64_t vocab) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int32_t> id(3, static_cast<int32_t>(vocab) - 1);
  std::vector<std::vector<int32_t>> out(n, std::vector<int32_t>(T));
  for (auto& p : out) {
    p[0] = 1;
    for (int64_t t = 1; t < T; ++t) p[t] = id(gen);
  }
  return out;
}

// Bytes malloc has handed out and not had back (heap + mmapped blocks): what is live, without the heap's free holes.
int64_t MallocInUse() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<int64_t>(mi.uordblks + mi.hblkhd);
}

// The timing sink that also samples the live heap at every event (layer boundaries, progress, perplexities).
struct SamplingSink : bench::TimingSink {
  int64_t max_in_use = 0;
  void Sample() { max_in_use = std::max(max_in_use, MallocInUse()); }
  void OnProgress(const job::Progress& p) override { Sample(), TimingSink::OnProgress(p); }
  void OnLayer(const job::LayerResult& r) override { Sample(), TimingSink::OnLayer(r); }
  void OnPerplexity(const job::PerplexityResult& r) override { Sample(), TimingSink::OnPerplexity(r); }
};

// One (T, budget) run in this process; prints one JSON line to stdout.
int Child(std::map<std::string, std::string>& flags) {
  auto num = [&](const char* k) { return bench::IntFlag(flags, k); };
  if (num("tune-malloc") != 0) sinkscope::model::TuneMallocForTensors();
  sinkscope::model::SetComputeThreads(static_cast<int>(num("threads")));
  const int64_t T = num("length"), n = std::max<int64_t>(1, num("tokens") / T);
  const sinkscope::model::LlamaConfig c =
      bench::BenchConfig(num("layers"), num("hidden"), num("heads"), num("heads"), num("intermediate"), num("vocab"),
                         std::max<int64_t>(T, 4096));
  at::NoGradGuard no_grad;
  auto m = sinkscope::model::LlamaModel::FromWeights(c, bench::RandomWeights(c, at::kFloat), "random");
  if (!m.ok()) {
    std::cerr << m.status() << "\n";
    return 1;
  }
  job::Inputs inputs;
  inputs.token_ids = RandomPrompts(n, T, c.vocab_size);
  const job::JobSpec spec = bench::PhaseSpec({"random"}, inputs, static_cast<int32_t>(T));
  job::RunLimits limits;
  limits.pack_tokens = static_cast<int32_t>(num("pack-tokens"));
  limits.max_tokens_per_prompt = static_cast<int32_t>(T);
  limits.forward_memory_bytes = 0;
  const std::string budget = flags["budget"];
  if (budget == "half") {
    limits.residual_memory_bytes = job::ResidualBytes(c, n * T / 2, 4);
  } else if (!absl::SimpleAtoi(budget, &limits.residual_memory_bytes)) {
    std::cerr << "--budgets: '" << budget << "' is neither a byte count nor half\n";
    return 2;
  }
  auto plan = job::BuildPlan(spec, {{"random", *m, nullptr}}, limits);
  if (!plan.ok()) {
    std::cerr << "plan: " << plan.status() << "\n";
    return 1;
  }
  // The planner's view: the largest wave's carried residuals and the largest pack's activations.
  std::map<int32_t, int64_t> wave_tokens;
  int64_t forward_est = 0;
  int waves = 0;
  for (const job::Pass& p : plan->passes) {
    std::vector<int64_t> lengths(p.num_prompts, T);
    forward_est = std::max(forward_est, job::ForwardBytes(c, lengths, 4, 512));
    if (p.kind != job::Pass::Kind::kBaseline) continue;
    wave_tokens[p.wave] += p.num_prompts * T;
    waves = std::max(waves, p.wave + 1);
  }
  int64_t carried = 0;
  for (const auto& [w, tokens] : wave_tokens) carried = std::max(carried, job::ResidualBytes(c, tokens, 4));

  auto run = [&](bench::TimingSink* sink) { return job::Execute(*plan, sink, [] { return absl::OkStatus(); }); };
  const int64_t rss0 = bench::StatusKb("VmRSS:"), in_use0 = MallocInUse();
  const bool reset = bench::ResetPeakRss();
  SamplingSink cold;
  auto s = run(&cold);
  const int64_t hwm = bench::StatusKb("VmHWM:");
  if (!s.ok()) {
    std::cerr << "job: " << s.status() << "\n";
    return 1;
  }
  const double cold_s = bench::Seconds(cold.t0, bench::Clock::now());
  bench::TimingSink warm;  // its clock starts now
  auto s2 = run(&warm);
  const double warm_s = bench::Seconds(warm.t0, bench::Clock::now());
  if (!s2.ok()) {
    std::cerr << "job: " << s2.status() << "\n";
    return 1;
  }
  const auto [first, last] = warm.FinalLayerTimes("random");
  nlohmann::json out = {{"length", T},
                        {"prompts", n},
                        {"budget", budget},
                        {"residual_memory_bytes", limits.residual_memory_bytes},
                        {"waves", waves},
                        {"forwards", plan->estimate.forwards},
                        {"layers_computed", s->models[0].layers_computed},
                        {"rss_before_mib", rss0 / 1024.0},
                        {"peak_growth_mib", reset ? (hwm - rss0) / 1024.0 : -1.0},
                        {"live_at_events_mib", (cold.max_in_use - in_use0) / kMiB},
                        {"carried_est_mib", carried / kMiB},
                        {"forward_est_mib", forward_est / kMiB},
                        {"cold_s", cold_s},
                        {"warm_s", warm_s},
                        {"first_final_layer_s", first},
                        {"last_final_layer_s", last},
                        {"numbers", warm.numbers}};
  std::cout << out.dump() << "\n";
  return 0;
}

// Runs this binary with --child for one (T, budget); returns its JSON line.
absl::StatusOr<nlohmann::json> RunChild(const std::map<std::string, std::string>& flags, int64_t T,
                                        const std::string& budget) {
  std::string cmd = "/proc/" + std::to_string(getpid()) + "/exe --child=1";
  for (const auto& [k, v] : flags)
    if (k != "child" && k != "length" && k != "budget" && k != "out" && k != "name" && k != "lengths" &&
        k != "budgets")
      absl::StrAppend(&cmd, " --", k, "=", v);
  absl::StrAppend(&cmd, " --length=", T, " --budget=", budget);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::InternalError("popen failed");
  std::string text;
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, got);
  const int rc = pclose(p);
  if (rc != 0) return absl::InternalError(absl::StrCat(cmd, " exited with ", rc));
  return nlohmann::json::parse(text);
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = bench::ParseFlags(argc, argv,
                                 {{"child", "0"},
                                  {"length", "0"},
                                  {"budget", ""},
                                  {"lengths", "512,4096"},
                                  {"tokens", "16384"},
                                  {"budgets", "1,0,half"},
                                  {"layers", "4"},
                                  {"hidden", "512"},
                                  {"heads", "8"},
                                  {"intermediate", "1376"},
                                  {"vocab", "4096"},
                                  {"pack-tokens", "4096"},
                                  {"threads", "2"},
                                  {"tune-malloc", "1"},
                                  {"out", SINKSCOPE_BENCH_RESULTS},
                                  {"name", "memory"}},
                                 "sinkscope-memory-bench");
  if (flags["child"] == "1") return Child(flags);
  const std::string load_before = bench::LoadAvg();
  nlohmann::json out;
  out["runs"] = nlohmann::json::array();
  for (absl::string_view ts : absl::StrSplit(flags["lengths"], ',')) {
    int64_t T = 0;
    if (!absl::SimpleAtoi(ts, &T) || T < 2) {
      std::cerr << "bad --lengths entry " << ts << "\n";
      return 2;
    }
    std::map<std::string, double> reference;
    for (const std::string& b : std::vector<std::string>(absl::StrSplit(flags["budgets"], ','))) {
      absl::StatusOr<nlohmann::json> r = RunChild(flags, T, b);
      if (!r.ok()) {
        std::cerr << r.status() << "\n";
        return 1;
      }
      const auto numbers = (*r)["numbers"].get<std::map<std::string, double>>();
      if (reference.empty()) reference = numbers;
      (*r)["max_rel_diff_vs_first"] = bench::MaxRelDiff(reference, numbers);
      r->erase("numbers");
      std::cerr << r->dump() << "\n";
      out["runs"].push_back(*r);
    }
  }
  sinkscope::model::SetComputeThreads(static_cast<int>(bench::IntFlag(flags, "threads")));  // as the children ran
  const bench::Machine machine = bench::DescribeMachine(load_before);
  out["machine"] = machine.json;
  out["model"] = {{"layers", flags["layers"]}, {"hidden", flags["hidden"]}, {"heads", flags["heads"]},
                  {"intermediate", flags["intermediate"]}, {"vocab", flags["vocab"]}, {"dtype", "float32"}};
  out["job"] = {{"tokens", flags["tokens"]}, {"pack_tokens", flags["pack-tokens"]}};
  const std::string dir = flags["out"], name = flags["name"];
  std::ofstream md = bench::OpenReport(dir, name, out);
  md << "# Memory of layer-major execution (sinkscope-memory-bench)\n\n" << machine.line;
  md << absl::StrFormat(
      "Job: the phase suite (sink rate, massive Q/K/V, BOS residual stats, matrix entropy, perplexity with the "
      "BOS-MLP ablation at the spike layer) on a random float32 model (%s layers, d=%s, %s heads, MLP %s, vocab %s), "
      "%s tokens of random prompts of T tokens each, packed into forwards of up to %s tokens; each row in a fresh "
      "process.\n\n",
      flags["layers"], flags["hidden"], flags["heads"], flags["intermediate"], flags["vocab"], flags["tokens"],
      flags["pack-tokens"]);
  md << "| T | prompts | residual budget | waves | forwards | layers computed | RSS before (MiB) | "
        "peak growth (MiB) | live at events (MiB) | carried, planner (MiB) | forward, planner (MiB) | cold (s) | "
        "warm (s) | first final layer (s) | last final layer (s) | max rel. diff |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : out["runs"]) {
    const std::string budget = bench::ResidualBudgetLabel(r["residual_memory_bytes"].get<int64_t>()) +
                               (r["budget"] == "half" ? " (half)" : "");
    md << absl::StrFormat("| %d | %d | %s | %d | %d | %d | %.0f | %.0f | %.0f | %.1f | %.1f | %.2f | %.2f | %.2f "
                          "| %.2f | %.1e |\n",
                          r["length"].get<int64_t>(), r["prompts"].get<int64_t>(), budget, r["waves"].get<int>(),
                          r["forwards"].get<int64_t>(), r["layers_computed"].get<int64_t>(),
                          r["rss_before_mib"].get<double>(), r["peak_growth_mib"].get<double>(),
                          r["live_at_events_mib"].get<double>(),
                          r["carried_est_mib"].get<double>(), r["forward_est_mib"].get<double>(),
                          r["cold_s"].get<double>(), r["warm_s"].get<double>(), r["first_final_layer_s"].get<double>(),
                          r["last_final_layer_s"].get<double>(), r["max_rel_diff_vs_first"].get<double>());
  }
  md << "\n'peak growth' is VmHWM during the job's first (cold) run minus VmRSS before it: the memory the job needed "
        "beyond the loaded model and its plan. 'live at events' is the most malloc had handed out (heap holes "
        "excluded) at any event of that run — layer boundaries, not inside a layer — less what it had before. "
        "'carried' is the planner's estimate of the residual streams the largest "
        "wave carries between layers (prompt-major: one forward's); 'forward' its estimate of one forward's "
        "activations at their peak. What running layer-major costs shows in 'live at events': the one wave's "
        "carried residuals beyond one forward's, plus the residuals kept while the spike layer is tracked (at most "
        "two layers') for the BOS-MLP ablation; 'peak growth' also holds a layer's temporaries and, most likely, "
        "the heap's holes around long-lived residuals allocated between them. 'first/last final layer' are seconds "
        "from the start of the warm run. max rel. diff is the largest |x − x₀| / max(1, |x₀|) over every number of "
        "the job against the prompt-major run of the same T.\n";
  std::cerr << "wrote " << dir << "/" << name << ".md and " << name << ".json\n";
  return 0;
}
