// Common pieces of the analyses: model geometry, the per-prompt context, the LayerAnalysis interface every
// observational metric implements, and float64 accumulators (mean ± population std over prompts, Gini).
//
// How an analysis works (docs/analyses.md): for every prompt the runner builds a fresh model::HookSet, asks each
// analysis to Register() its observers, and runs ONE forward. Observers reduce the activation they see to a few
// numbers at once (per layer, per head) and merge them into per-layer accumulators, so nothing of a prompt's
// activations outlives its layer, and memory does not grow with the number of prompts. After the last prompt's
// forward has passed layer l, Fill(l) produces that layer's result (mean ± population std over prompts, ddof 0 as
// the study's np.std).
//
// Only <ATen/core/Tensor.h> (cheap) is included here; the tensor math lives in the analysis .cc files.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/job/job_spec.h"
#include "common/model/config.h"
#include "common/model/hooks.h"

namespace sinkscope::analysis {

// Model geometry needed by the analyses (from config.json).
struct ModelDims {
  int64_t n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, d_model = 0, d_mlp = 0, vocab = 0;
  bool rope = false;
  static ModelDims From(const model::LlamaConfig& c);
};

// The prompt being processed: its index among the job's prompts and its length T (BOS included).
struct PromptCtx {
  int32_t index = 0;
  int64_t T = 0;
};

// Welford accumulator in float64: mean and population std (ddof 0) of a scalar over prompts.
class StatAcc {
 public:
  void Add(double x);
  int32_t n() const { return n_; }
  double mean() const { return mean_; }
  double std() const;
  job::Stat Get() const { return job::Stat{mean_, std(), n_}; }

 private:
  int32_t n_ = 0;
  double mean_ = 0, m2_ = 0;
};

// The first i in [0, n) with the largest value(i) (the smallest with `lowest`), like np.argmax / np.argmin.
int32_t ArgBest(int32_t n, const std::function<double(int32_t)>& value, bool lowest = false);

// Copies small float64 observer results that live on the model's device to the host in ONE transfer. Each .cpu()
// or .item() of a CUDA tensor waits for the GPU to drain its queue, so an observer that copied per prompt would stall
// a packed forward hundreds of times per layer; observers keep their device results pending and their Flush() copies
// them all at once. Returns contiguous CPU float64 tensors of the same shapes, in order (CPU inputs as they are).
std::vector<at::Tensor> ToHost(const std::vector<at::Tensor>& tensors);

// The Flush() of an analysis whose observers leave one device tensor (member `tensor`) per pending item: copies them
// all to the host at once and calls merge(item, host tensor) for each item, in order; then clears `pending`.
template <class Item, class Merge>
void MergePending(std::vector<Item>* pending, at::Tensor Item::*tensor, Merge merge) {
  if (pending->empty()) return;
  std::vector<at::Tensor> on_device;
  on_device.reserve(pending->size());
  for (const Item& item : *pending) on_device.push_back(item.*tensor);
  const std::vector<at::Tensor> host = ToHost(on_device);
  for (size_t i = 0; i < pending->size(); ++i) merge((*pending)[i], host[i]);
  pending->clear();
}

// Gini coefficient of non-negative values, in float64 (the study's fp16 version overflowed, docs/study.md §6.6):
//   x sorted ascending, i = 1..n:  G = 2·Σ i·x_i / (n·Σ x_i) − (n+1)/n ;  G = 0 when Σ x_i = 0.
double Gini(std::vector<double> values);

// One observational metric over all prompts of one model.
class LayerAnalysis {
 public:
  virtual ~LayerAnalysis() = default;
  // Adds the observers for the forward of prompt `p` to `hooks`. Called once per prompt, in order.
  virtual void Register(const PromptCtx& p, model::HookSet* hooks) = 0;
  // Called after every layer of a forward this analysis observes, and once more after the forward returns: work
  // deferred by the observers (batched over a packed forward's prompts) must be done and accumulated by then.
  virtual void Flush() {}
  // Host work that Flush() left running in the background (matrix entropy's spectra with overlap, so that the
  // device goes on with the next layer meanwhile): waits for and merges, in order, every batch whose layers are all
  // <= through_layer. Fill(l) and FillPrompt(., l) need Settle(l) first, Summarize() a Settle of every layer.
  virtual void Settle(int64_t through_layer) {}
  // Called after prompt `p`'s forward returned successfully (per-prompt totals over layers, ...).
  virtual void EndPrompt(const PromptCtx& p) {}
  // True if layer `layer`'s numbers only exist after the whole forward (last layer read after the final norm).
  virtual bool LastLayerAfterFinalNorm() const { return false; }
  // Fills this analysis' part of the result of `layer` (-1 = model-level hooks); call after the last prompt has
  // passed that layer.
  virtual void Fill(int32_t layer, job::LayerResult* out) const = 0;
  // Fills this analysis' part of prompt `prompt`'s numbers at `layer` (JobSpec.per_prompt). Analyses keep per-prompt
  // values only after KeepPerPrompt().
  virtual void FillPrompt(int32_t prompt, int32_t layer, job::PromptLayer* out) const {}
  void KeepPerPrompt() { per_prompt_ = true; }
  // Whether the analysis emits a result for model-level hooks (layer -1).
  virtual bool HasModelLevel() const { return false; }
  // Per-model scalar metrics for the job summary (names as in docs/analyses.md).
  virtual void Summarize(std::map<std::string, double>* metrics) const {}
  // First error an observer ran into (observers cannot return one); checked by the runner after each forward.
  absl::Status status() const { return status_; }

 protected:
  absl::Status status_;
  bool per_prompt_ = false;
};

}  // namespace sinkscope::analysis
