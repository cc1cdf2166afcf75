// Observers: the observational analyses of one model in a job and the hidden helpers riding on its baseline
// pass; Compare: the comparison table of a multi-model job. Internal to common/job (execute.cc).
#ifndef SINKSCOPE_COMMON_JOB_OBSERVERS_H_
#define SINKSCOPE_COMMON_JOB_OBSERVERS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/analysis/analysis.h"
#include "common/analysis/interventions.h"
#include "common/analysis/residual_stats.h"
#include "common/job/plan.h"

namespace sinkscope::job {

// One row per metric every model reports: values, differences and ratios to the first model.
std::vector<ComparisonRow> Compare(const std::vector<ModelSummary>& ms);

// Observational analyses of one model and the hidden helpers that ride on its baseline pass.
struct Observers {
  std::vector<std::unique_ptr<analysis::LayerAnalysis>> emitted;  // the job's own analyses
  analysis::ResidualStats* resid = nullptr;                       // spike detection (emitted or hidden)
  std::unique_ptr<analysis::ResidualStats> hidden_resid;
  std::unique_ptr<analysis::QkIdentifier> ident;  // Q/K massive dims on the job's inputs
  bool ident_fed = false;  // a massive-values analysis hands ident its norm matrices (no observers of its own)
  bool last_after_norm = false, model_level = false;
  bool overlapped = false;  // some analysis leaves host work running after Flush (Settle before Layer)

  // `overlap`: analyses with host work (matrix entropy) do it in the background (analysis::LayerAnalysis::Settle).
  Observers(const Plan& plan, const analysis::ModelDims& dims, bool overlap);
  // Registers every analysis's observers for one prompt of a pack.
  void Register(const analysis::PromptCtx& ctx, model::HookSet* hooks) const;
  // Deferred (batched) work of the analyses, after every layer and forward.
  void Flush() const;
  // Merges the background work of layers <= through_layer (LayerAnalysis::Settle).
  void Settle(int64_t through_layer) const;
  // Layer l's result over the first `done` of `total` prompts (partial while done < total); none when no analysis
  // reports that layer.
  std::optional<LayerResult> Layer(const std::string& model, int32_t l, int32_t done, int32_t total) const;
  // Prompt p's per-layer numbers (JobSpec.per_prompt), its ids when `ids_too`; perplexities are the runner's.
  PromptResult Prompt(const std::string& model, int32_t p, const std::vector<int32_t>& ids, bool ids_too,
                      int32_t n_layers) const;
};

}  // namespace sinkscope::job

#endif  // SINKSCOPE_COMMON_JOB_OBSERVERS_H_
