// sinkscope-job-bench: a whole job (the study's phase suite, optionally with Q/K disruption and random controls)
// run in-process on real checkpoints, once per prompt-packing budget, to measure what packing buys.
//
// For each budget (RunLimits.pack_tokens; 0 = one prompt per forward) it reports the forwards run, the best and
// median wall time of N repeats, tokens/s (tokens through all forwards / best time), the speed-up over one prompt
// per forward, and the largest relative difference of any summary metric or perplexity from the unpacked run (a
// correctness check on the timed jobs themselves: packing must not move a number). It also counts the ATen ops the
// untimed warm-up run dispatches (top-level calls, i.e. what the engine asks for; on a GPU each launches one or more
// kernels, and the launch cost of many small ones is what packing and deferred copies are about), in all and per
// layer computed. Writes <out>/packing.md and <out>/packing.json.
//
// Usage: sinkscope-job-bench [--models=models/tiny-rope,models/tiny-drope] [--device=cpu] [--dtype=float32]
//                            [--dataset=brown-heldout] [--data-dir=models/datasets] [--prompts=64]
//                            [--max-tokens=128] [--budgets=0,512,2048,8192] [--suite=phase|phase+qk]
//                            [--repeats=3] [--threads=2] [--out=bench/results] [--name=packing]
//                            [--ids=FILE]   (a JSON array of token-id prompts instead of --dataset)
//                            [--digest=0]   (1: hash the weights at load, as the server does by default)

#include <ATen/record_function.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_jobs.h"
#include "bench/bench_model.h"
#include "bench/bench_report.h"
#include "bench/bench_util.h"
#include "common/job/plan.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

namespace job = sinkscope::job;
using sinkscope::bench::Clock;
using sinkscope::bench::Seconds;

// Top-level ATen ops dispatched while an OpCounter lives (ops called from inside other ops are not counted).
std::atomic<int64_t> g_top_level_ops{0};
thread_local int g_op_depth = 0;

class OpCounter {
 public:
  OpCounter() {
    g_top_level_ops = 0;
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(
        [](const at::RecordFunction&) -> std::unique_ptr<at::ObserverContext> {
          if (g_op_depth++ == 0) ++g_top_level_ops;
          return nullptr;
        },
        [](const at::RecordFunction&, at::ObserverContext*) { --g_op_depth; }));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  int64_t ops() const { return g_top_level_ops; }

 private:
  at::CallbackHandle handle_;
};

// Every summary metric and perplexity of a run, by name.
std::map<std::string, double> Numbers(const job::Summary& s) {
  std::map<std::string, double> n;
  for (const auto& m : s.models)
    for (const auto& [k, v] : m.metrics) n[m.model + "/" + k] = v;
  for (const auto& p : s.perplexity) n[p.model + "/ppl/" + p.condition] = p.perplexity;
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = sinkscope::bench::ParseFlags(
      argc, argv,
      {{"models", "models/tiny-rope,models/tiny-drope"},
       {"device", "cpu"},
       {"dtype", "float32"},
       {"dataset", "brown-heldout"},
       {"data-dir", "models/datasets"},
       {"prompts", "64"},
       {"max-tokens", "128"},
       {"budgets", "0,512,2048,8192"},
       {"suite", "phase"},
       {"repeats", "3"},
       {"threads", "2"},
       {"out", SINKSCOPE_BENCH_RESULTS},
       {"name", "packing"},
       {"ids", ""},
       {"digest", "0"}},
      "sinkscope-job-bench");
  sinkscope::model::TuneMallocForTensors();
  sinkscope::model::SetComputeThreads(static_cast<int>(sinkscope::bench::IntFlag(flags, "threads")));

  std::vector<job::ModelHandle> handles;
  std::vector<std::string> names;
  {
    auto loaded =
        sinkscope::bench::LoadHandles(flags["models"], flags["device"], flags["dtype"], flags["digest"] != "0");
    if (!loaded.ok()) {
      std::cerr << loaded.status().message() << "\n";
      return 1;
    }
    handles = std::move(*loaded);
  }
  for (const job::ModelHandle& h : handles) names.push_back(h.name);
  const bool qk = flags["suite"] == "phase+qk";
  job::Inputs inputs;
  if (flags["ids"].empty()) {
    inputs.dataset = flags["dataset"];
  } else {
    std::ifstream in(flags["ids"]);
    inputs.token_ids = nlohmann::json::parse(in).get<std::vector<std::vector<int32_t>>>();
  }
  inputs.max_prompts = static_cast<int32_t>(sinkscope::bench::IntFlag(flags, "prompts"));
  const job::JobSpec spec = sinkscope::bench::PhaseSpec(
      names, inputs, static_cast<int32_t>(sinkscope::bench::IntFlag(flags, "max-tokens")), qk);
  const int64_t repeats = sinkscope::bench::IntFlag(flags, "repeats");

  nlohmann::json out;
  out["runs"] = nlohmann::json::array();
  std::map<std::string, double> reference;
  double unpacked_best = 0;
  const std::string load_before = sinkscope::bench::LoadAvg();
  for (const std::string& b : std::vector<std::string>(absl::StrSplit(flags["budgets"], ','))) {
    job::RunLimits limits;
    limits.data_dir = flags["data-dir"];
    limits.max_tokens_per_prompt = 1 << 20;
    if (!absl::SimpleAtoi(b, &limits.pack_tokens)) {
      std::cerr << "--budgets: '" << b << "' is not an integer\n";
      return 2;
    }
    auto plan = job::BuildPlan(spec, handles, limits);
    if (!plan.ok()) {
      std::cerr << "plan: " << plan.status() << "\n";
      return 1;
    }
    std::vector<double> times;
    std::map<std::string, double> numbers;
    int64_t ops = 0, layers = 0;
    for (int64_t r = 0; r <= repeats; ++r) {  // run 0 warms up (allocator, caches), counts ops and is not timed
      std::optional<OpCounter> counter;
      if (r == 0) counter.emplace();
      const auto t0 = Clock::now();
      auto s = job::Execute(*plan, nullptr, [] { return absl::OkStatus(); });
      const double t = Seconds(t0, Clock::now());
      if (!s.ok()) {
        std::cerr << "job: " << s.status() << "\n";
        return 1;
      }
      if (r == 0) {
        ops = counter->ops();
        for (const job::ModelSummary& m : s->models) layers += m.layers_computed;
      }
      if (r > 0) times.push_back(t);
      numbers = Numbers(*s);
    }
    if (reference.empty()) reference = numbers;
    const double worst = sinkscope::bench::MaxRelDiff(reference, numbers);
    const double best = *std::min_element(times.begin(), times.end());
    if (unpacked_best == 0) unpacked_best = best;  // the first budget is the reference
    const double tokens = static_cast<double>(plan->estimate.tokens);
    nlohmann::json run = {{"pack_tokens", limits.pack_tokens},
                          {"forwards", plan->estimate.forwards},
                          {"tokens", plan->estimate.tokens},
                          {"best_s", best},
                          {"median_s", sinkscope::bench::Median(times)},
                          {"tokens_per_s", tokens / best},
                          {"speedup_vs_first", unpacked_best / best},
                          {"max_rel_diff_vs_first", worst},
                          {"aten_ops", ops},
                          {"layers_computed", layers},
                          {"aten_ops_per_layer", layers > 0 ? static_cast<double>(ops) / layers : 0.0}};
    std::cerr << run.dump() << "\n";
    out["runs"].push_back(run);
  }

  const sinkscope::bench::Machine machine = sinkscope::bench::DescribeMachine(load_before);
  out["machine"] = machine.json;
  out["job"] = {{"models", flags["models"]}, {"device", flags["device"]}, {"dtype", flags["dtype"]},
                {"dataset", flags["dataset"]}, {"ids", flags["ids"]}, {"prompts", flags["prompts"]},
                {"max_tokens", flags["max-tokens"]},
                {"suite", flags["suite"]},     {"repeats", repeats}};
  const std::string dir = flags["out"], name = flags["name"];
  std::ofstream md = sinkscope::bench::OpenReport(dir, name, out);
  md << "# Prompt packing (sinkscope-job-bench)\n\n" << machine.line;
  md << absl::StrFormat(
      "Job: %s suite (%s) on %s, %s %s, up to %s prompts (%s) cut to %s tokens; in-process "
      "BuildPlan + Execute, best of %d after a warm-up run (median in its own column).\n\n",
      flags["suite"],
      qk ? "sink rate, massive Q/K/V, BOS residual stats, matrix entropy, perplexity with BOS-MLP ablation at the "
           "spike layer and Q/K massive-dim disruption with 3 random controls"
         : "sink rate, massive Q/K/V, BOS residual stats, matrix entropy, perplexity with BOS-MLP ablation at the "
           "spike layer",
      flags["models"], flags["dtype"], flags["device"], flags["prompts"],
      flags["ids"].empty() ? "dataset " + flags["dataset"] : "token ids from " + flags["ids"], flags["max-tokens"],
      static_cast<int>(repeats));
  md << "| pack_tokens | forwards | tokens | best (s) | median (s) | tokens/s | speed-up | max rel. diff | ATen ops | "
        "ops / layer |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : out["runs"])
    md << absl::StrFormat("| %d | %d | %d | %.3f | %.3f | %.0f | %.2f | %.1e | %d | %.0f |\n",
                          r["pack_tokens"].get<int>(), r["forwards"].get<int64_t>(), r["tokens"].get<int64_t>(),
                          r["best_s"].get<double>(), r["median_s"].get<double>(), r["tokens_per_s"].get<double>(),
                          r["speedup_vs_first"].get<double>(), r["max_rel_diff_vs_first"].get<double>(),
                          r["aten_ops"].get<int64_t>(), r["aten_ops_per_layer"].get<double>());
  md << "\nspeed-up and max rel. diff are against the first row (pack_tokens 0: one prompt per forward); the diff is "
        "the largest |x − x₀| / max(1, |x₀|) over every summary metric and perplexity of the job. ATen ops: top-level "
        "ops dispatched by the untimed warm-up run (every model, condition and control); ops / layer divides them by "
        "the decoder layers computed (ModelSummary.layers_computed): a GPU launches at least one kernel per op.\n";
  std::cerr << "wrote " << dir << "/" << name << ".md and " << name << ".json\n";
  return 0;
}
