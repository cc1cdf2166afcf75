// Perplexity conditions: what each intervention of a PerplexitySpec does to a forward, resolved once per model
// from the baseline pass (spike layer, Q/K massive dims) and described for its PerplexityResult. Torch-free header.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "common/analysis/interventions.h"
#include "common/analysis/residual_stats.h"
#include "common/job/job_spec.h"

namespace sinkscope::job {

struct Condition {
  std::string name;                                // progress label: the condition label, or ".../control_seed_N"
  std::function<void(model::HookSet*)> install;    // adds the intervention's hooks to one forward's hook set
  analysis::QkMasks masks;                         // QkMassiveDisruption: the disrupted dims (controls match counts)
};

// The intervention as a condition of model `dims`. `resid` provides the spike layer (BOS-MLP ablation without an
// explicit layer) and `ident` the Q/K identification norms (QkMassiveDisruption). Fills r->detail,
// r->resolved_layer, r->disrupted_dims and the per-model metrics "<key>.layer" / "<key>.dims", key =
// "perplexity.<label>".
absl::StatusOr<Condition> ResolveCondition(const Intervention& iv, const std::string& label,
                                           const analysis::ModelDims& dims, const analysis::ResidualStats* resid,
                                           const analysis::QkIdentifier* ident, PerplexityResult* r,
                                           std::map<std::string, double>* metrics);

// A random control of a resolved QkMassiveDisruption condition: the same number of dims per layer and tensor,
// drawn with `seed` (analysis::RandomControlMasks).
Condition ControlCondition(const Condition& main, const QkMassiveDisruption& q, const std::string& label,
                           uint64_t seed, const analysis::ModelDims& dims);

// The finished result of an intervention whose passes (and its controls') are done, against the model's baseline
// perplexity: sets r->control (from `controls`, over r->control_perplexities) and r->ratio_to_baseline, and the
// per-model metrics "<key>", "<key>.ratio", "<key>.increase_pct" and, with controls, "<key>.control_mean",
// "<key>.control_std", "<key>.control_increase_pct" (mean of `controls_pct`) and "<key>.massive_minus_random_pct".
void FinishConditionResult(const std::string& key, double base_ppl, const analysis::StatAcc& controls,
                           const analysis::StatAcc& controls_pct, PerplexityResult* r,
                           std::map<std::string, double>* metrics);

}  // namespace sinkscope::job
