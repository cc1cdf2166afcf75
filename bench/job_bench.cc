// sinkscope-job-bench: a whole job (the study's phase suite, optionally with Q/K disruption and random controls)
// run in-process on real checkpoints, once per prompt-packing budget, to measure what packing buys.
//
// For each budget (RunLimits.pack_tokens; 0 = one prompt per forward) and way of batching the attention of prompts
// of different lengths (RunLimits.attention: equal-length runs or padded groups) it reports the forwards run, the
// best and median wall time of N repeats, tokens/s (tokens through all forwards / best time), the speed-up over
// one prompt per forward, and the largest relative difference of any summary metric or perplexity from the unpacked
// run (a correctness check on the timed jobs themselves: packing must not move a number). It also counts the ATen
// ops the untimed warm-up run dispatches (top-level calls, i.e. what the engine asks for; on a GPU each launches one
// or more kernels, and the launch cost of many small ones is what packing and deferred copies are about), in all and
// per layer computed, and the most frequent ops of the last row. Writes <out>/packing.md and <out>/packing.json.
//
// Usage: sinkscope-job-bench [--models=models/tiny-rope,models/tiny-drope] [--device=cpu] [--dtype=float32]
//                            [--dataset=brown-heldout] [--data-dir=models/datasets] [--prompts=64]
//                            [--max-tokens=128] [--budgets=0,512,2048,8192] [--suite=phase|phase+qk]
//                            [--attention=auto]  (a list of auto|equal|padded: RunLimits::attention; each packed
//                                                 budget runs once per entry, one prompt per forward once)
//                            [--min-tokens=0]    (with --ids: prompt i is cut to a length spread evenly over
//                                                 [min-tokens, max-tokens], so that packed prompts differ in length)
//                            [--repeats=3] [--threads=2] [--out=bench/results] [--name=packing]
//                            [--ids=FILE]   (a JSON array of token-id prompts instead of --dataset)
//                            [--digest=0]   (1: hash the weights at load, as the server does by default)

#include <ATen/record_function.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
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

// Top-level ATen ops dispatched while an OpCounter lives (ops called from inside other ops are not counted), in all
// and by name.
std::atomic<int64_t> g_top_level_ops{0};
thread_local int g_op_depth = 0;
std::mutex g_by_name_mu;
std::map<std::string, int64_t> g_by_name;

class OpCounter {
 public:
  OpCounter() {
    g_top_level_ops = 0;
    g_by_name.clear();
    handle_ = at::addGlobalCallback(at::RecordFunctionCallback(
        [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
          if (g_op_depth++ == 0) {
            ++g_top_level_ops;
            std::lock_guard<std::mutex> lock(g_by_name_mu);
            ++g_by_name[fn.name()];
          }
          return nullptr;
        },
        [](const at::RecordFunction&, at::ObserverContext*) { --g_op_depth; }));
  }
  ~OpCounter() { at::removeCallback(handle_); }
  int64_t ops() const { return g_top_level_ops; }
  // The most frequent op names, most frequent first.
  std::vector<std::pair<std::string, int64_t>> Top(size_t n) const {
    std::lock_guard<std::mutex> lock(g_by_name_mu);
    std::vector<std::pair<std::string, int64_t>> v(g_by_name.begin(), g_by_name.end());
    std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    if (v.size() > n) v.resize(n);
    return v;
  }

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
       {"attention", "auto"},
       {"min-tokens", "0"},
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
  const int64_t min_tokens = sinkscope::bench::IntFlag(flags, "min-tokens");
  if (min_tokens > 0) {  // prompt i: min + (i·37 mod span) tokens, a spread that does not follow prompt order
    if (inputs.token_ids.empty()) {
      std::cerr << "--min-tokens needs --ids (dataset prompts already differ in length)\n";
      return 2;
    }
    const int64_t span = std::max<int64_t>(1, sinkscope::bench::IntFlag(flags, "max-tokens") - min_tokens + 1);
    for (size_t i = 0; i < inputs.token_ids.size(); ++i) {
      const size_t n = static_cast<size_t>(min_tokens + static_cast<int64_t>(i * 37) % span);
      if (inputs.token_ids[i].size() > n) inputs.token_ids[i].resize(n);
    }
  }
  std::vector<std::pair<std::string, job::RunLimits::Attention>> attentions;
  for (const std::string& a : std::vector<std::string>(absl::StrSplit(flags["attention"], ','))) {
    using A = job::RunLimits::Attention;
    if (a != "auto" && a != "equal" && a != "padded") {
      std::cerr << "--attention: '" << a << "' is not auto, equal or padded\n";
      return 2;
    }
    attentions.emplace_back(a, a == "auto" ? A::kAuto : a == "equal" ? A::kEqualLength : A::kPadded);
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
  std::vector<std::pair<int32_t, size_t>> rows;  // (budget, index into attentions)
  for (const std::string& b : std::vector<std::string>(absl::StrSplit(flags["budgets"], ','))) {
    int32_t budget = 0;
    if (!absl::SimpleAtoi(b, &budget)) {
      std::cerr << "--budgets: '" << b << "' is not an integer\n";
      return 2;
    }
    for (size_t a = 0; a < (budget <= 1 ? 1 : attentions.size()); ++a) rows.emplace_back(budget, a);
  }
  for (const auto& [budget, attention] : rows) {
    job::RunLimits limits;
    limits.data_dir = flags["data-dir"];
    limits.max_tokens_per_prompt = 1 << 20;
    limits.pack_tokens = budget;
    limits.attention = attentions[attention].second;
    auto plan = job::BuildPlan(spec, handles, limits);
    if (!plan.ok()) {
      std::cerr << "plan: " << plan.status() << "\n";
      return 1;
    }
    std::vector<double> times;
    std::map<std::string, double> numbers;
    int64_t ops = 0, layers = 0;
    nlohmann::json top_ops = nlohmann::json::array();
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
        for (const auto& [op, n] : counter->Top(12)) top_ops.push_back({{"op", op}, {"count", n}});
        for (const job::ModelSummary& m : s->models) layers += m.layers_computed;
      }
      if (r > 0) times.push_back(t);
      numbers = Numbers(*s);
    }
    if (reference.empty()) reference = numbers;
    const double worst = sinkscope::bench::MaxRelDiff(reference, numbers);
    const double best = *std::min_element(times.begin(), times.end());
    if (unpacked_best == 0) unpacked_best = best;  // the first row is the reference
    const double tokens = static_cast<double>(plan->estimate.tokens);
    std::string resolved;  // what the attention setting came to for the (first) model
    if (limits.pack_tokens > 1)
      resolved = plan->models[0].attention == sinkscope::model::AttentionBatching::kPadded ? "padded" : "equal";
    nlohmann::json run = {{"pack_tokens", limits.pack_tokens},
                          {"attention", attentions[attention].first},
                          {"attention_used", resolved},
                          {"forwards", plan->estimate.forwards},
                          {"tokens", plan->estimate.tokens},
                          {"best_s", best},
                          {"median_s", sinkscope::bench::Median(times)},
                          {"tokens_per_s", tokens / best},
                          {"speedup_vs_first", unpacked_best / best},
                          {"max_rel_diff_vs_first", worst},
                          {"aten_ops", ops},
                          {"layers_computed", layers},
                          {"aten_ops_per_layer", layers > 0 ? static_cast<double>(ops) / layers : 0.0},
                          {"top_ops", top_ops}};
    std::cerr << run.dump() << "\n";
    out["runs"].push_back(run);
  }

  const sinkscope::bench::Machine machine = sinkscope::bench::DescribeMachine(load_before);
  out["machine"] = machine.json;
  out["job"] = {{"models", flags["models"]}, {"device", flags["device"]}, {"dtype", flags["dtype"]},
                {"dataset", flags["dataset"]}, {"ids", flags["ids"]}, {"prompts", flags["prompts"]},
                {"max_tokens", flags["max-tokens"]},
                {"suite", flags["suite"]},     {"repeats", repeats},
                {"attention", flags["attention"]}, {"min_tokens", min_tokens}};
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
      flags["ids"].empty() ? "dataset " + flags["dataset"] : "token ids from " + flags["ids"],
      min_tokens > 0 ? absl::StrCat(min_tokens, "-", flags["max-tokens"]) : flags["max-tokens"],
      static_cast<int>(repeats));
  md << "| pack_tokens | attention | forwards | tokens | best (s) | median (s) | tokens/s | speed-up | max rel. diff | "
        "ATen ops | ops / layer |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : out["runs"]) {
    const std::string used = r["attention_used"].get<std::string>();
    const std::string asked = r["attention"].get<std::string>();
    md << absl::StrFormat("| %d | %s | %d | %d | %.3f | %.3f | %.0f | %.2f | %.1e | %d | %.0f |\n",
                          r["pack_tokens"].get<int>(),
                          used.empty() ? "—" : asked == "auto" ? "auto: " + used : used,
                          r["forwards"].get<int64_t>(), r["tokens"].get<int64_t>(),
                          r["best_s"].get<double>(), r["median_s"].get<double>(), r["tokens_per_s"].get<double>(),
                          r["speedup_vs_first"].get<double>(), r["max_rel_diff_vs_first"].get<double>(),
                          r["aten_ops"].get<int64_t>(), r["aten_ops_per_layer"].get<double>());
  }
  md << "\nattention: how a packed forward batches the attention of prompts of different lengths (runs of equal "
        "length, or groups padded to their longest prompt; auto picks padded on a GPU). speed-up and max rel. diff "
        "are against the first row (pack_tokens 0: one prompt per forward); the diff is "
        "the largest |x − x₀| / max(1, |x₀|) over every summary metric and perplexity of the job. ATen ops: top-level "
        "ops dispatched by the untimed warm-up run (every model, condition and control); ops / layer divides them by "
        "the decoder layers computed (ModelSummary.layers_computed): a GPU launches at least one kernel per op.\n";
  if (!out["runs"].empty()) {  // where the ops of the most packed run go: what a GPU would launch one by one
    const auto& last = out["runs"].back();
    md << absl::StrFormat("\nMost frequent ATen ops of the last row's warm-up (pack_tokens %d, %d ops):\n\n",
                          last["pack_tokens"].get<int>(), last["aten_ops"].get<int64_t>());
    md << "| op | count | share |\n|---|---|---|\n";
    for (const auto& t : last["top_ops"])
      md << absl::StrFormat("| %s | %d | %.1f%% |\n", t["op"].get<std::string>(), t["count"].get<int64_t>(),
                            100.0 * t["count"].get<double>() / std::max<double>(1, last["aten_ops"].get<double>()));
  }
  std::cerr << "wrote " << dir << "/" << name << ".md and " << name << ".json\n";
  return 0;
}
