// Prefix reuse (internal to common/job, used by execute.cc): an intervention that first acts at layer l computes
// layers below l exactly as the clean baseline forward of the same pack did, so its forward may start from the
// clean residual entering l, kept while the layer-major baseline passes l. Which layers are kept:
//   - layers known before the baseline: an explicit BOS-MLP layer, the first layer of a head ablation or of edits;
//   - the spike layer of a BOS-MLP ablation by spike rule: unknown until the baseline ends, so (one wave only, where
//     each layer's statistics are final when the wave leaves it) the residual entering the spike-so-far is kept and
//     replaced when a later layer becomes the spike;
//   - the first layer a Q/K disruption acts at, when its dims are identified on the job's inputs: also known only as
//     the baseline goes (layer l selects dims or not once the one wave has left it), so the residual entering each
//     layer is kept until a layer selects some;
// as far as the residual memory budget allows, per pack; a pack without a kept residual recomputes from layer 0.
#ifndef SINKSCOPE_COMMON_JOB_PREFIX_REUSE_H_
#define SINKSCOPE_COMMON_JOB_PREFIX_REUSE_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <set>
#include <vector>

#include "common/analysis/interventions.h"
#include "common/analysis/residual_stats.h"
#include "common/job/plan.h"

namespace sinkscope::job {

class ResidualKeeper {
 public:
  // For model `mp` (config `cfg`) of the plan, within its residual budget; `one_wave`: its baseline runs as one
  // wave (spike tracking is possible).
  ResidualKeeper(const Plan& plan, const ModelPlan& mp, const model::LlamaConfig& cfg, const analysis::ModelDims& dims,
                 bool one_wave);

  // Before the wave of baseline passes `packs` runs layer l: entering[k] is the residual entering l of packs[k].
  void BeforeLayer(int32_t l, const std::vector<const Pass*>& packs, const std::vector<const at::Tensor*>& entering);
  // After the wave has run layer l: residuals kept for a spike candidate that is no longer one, or for a layer where
  // a Q/K disruption (identified by `ident` on the job's inputs; may be null) turned out not to start, are released.
  void AfterLayer(int32_t l, const analysis::ResidualStats* resid, const analysis::QkIdentifier* ident);
  // After the baseline: keeps only what some intervention will use.
  void EndBaseline(const analysis::ResidualStats* resid);

  // The kept residual to start a forward of `pack` whose hooks first act at layer `first`: the highest kept layer
  // <= first for that very pack (same first prompt and prompt count). Returns the layer (0 = none) and sets *x.
  int32_t Find(int64_t first, const Pass& pack, at::Tensor* x) const;
  int64_t bytes() const { return bytes_; }

 private:
  struct Kept {
    int32_t num_prompts = 0;
    at::Tensor x;
  };
  // A Q/K disruption identified on the job's inputs: the first layer where it selects dims (-1: not found yet).
  struct QkTrack {
    double lambda = 0;
    ThresholdScope scope = ThresholdScope::kLayer;
    bool q = true, k = true;
    int32_t first = -1;
  };
  void Drop(int32_t l);
  // Layers some intervention will start from, as far as the baseline has run (up_to = the last layer done; -1: all).
  std::set<int32_t> Wanted(const analysis::ResidualStats* resid, int32_t up_to) const;
  void DropAllBut(const std::set<int32_t>& keep, int32_t below);  // releases kept layers < below not in keep

  const model::LlamaConfig& cfg_;
  int64_t budget_ = 0, bytes_ = 0;
  std::set<int32_t> known_;                // layers wanted whatever the baseline shows
  std::vector<SpikeRule> spike_rules_;     // tracked when the baseline is one wave
  std::vector<QkTrack> qk_;                // likewise
  std::map<int32_t, std::map<int32_t, Kept>> kept_;  // layer -> first prompt of the pack -> residual
};

}  // namespace sinkscope::job

#endif  // SINKSCOPE_COMMON_JOB_PREFIX_REUSE_H_
