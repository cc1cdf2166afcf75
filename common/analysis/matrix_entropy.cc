// Matrix entropy; formulas in matrix_entropy.h. Compiled through analyses_unity.cc.
#include "common/analysis/matrix_entropy.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace sinkscope::analysis {

EntropyStats ComputeMatrixEntropy(const at::Tensor& x_in) {
  at::Tensor x = x_in.reshape({x_in.size(0), -1}).to(at::kDouble);
  const int64_t T = x.size(0), d = x.size(1);
  EntropyStats s;
  const double F = x.pow(2).sum().item<double>();
  if (!std::isfinite(F)) {  // NaN/inf activations: report them, never a plausible-looking number
    s.entropy = s.anisotropy = s.normalized = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  if (F < 1e-10) return s;  // the study's fallback for a degenerate X: (0, 1)
  at::Tensor gram = T <= d ? at::mm(x, x.t()) : at::mm(x.t(), x);
  at::Tensor ev = at::linalg_eigvalsh(gram).clamp_min(0).cpu().contiguous();  // ascending
  const double* e = ev.data_ptr<double>();
  const int64_t n = ev.numel();
  constexpr double kClamp = 1e-10;
  double H = 0, p1 = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::max(e[j] / F, kClamp);
    H -= p * std::log(p);
    p1 = std::max(p1, p);
  }
  if (T > d) H -= static_cast<double>(T - d) * kClamp * std::log(kClamp);  // the zeros of the T×T Gram
  s.entropy = H;
  s.anisotropy = p1;
  const int64_t r = std::min(T, d);
  s.normalized = r > 1 ? H / std::log(static_cast<double>(r)) : 0.0;
  return s;
}

namespace matrix_entropy_internal {

class MatrixEntropy final : public LayerAnalysis {
 public:
  MatrixEntropy(const job::MatrixEntropySpec& spec, const ModelDims& dims)
      : spec_(spec), dims_(dims), layers_(dims.n_layers) {}

  void Register(const PromptCtx&, model::HookSet* hooks) override {
    for (int64_t l = 0; l < dims_.n_layers; ++l) {
      const bool final_norm = spec_.final_norm_last_layer && l == dims_.n_layers - 1;
      hooks->Observe(final_norm ? std::string("ln_final.hook_normalized") : model::HookName(l, model::HookId::kResidPost),
                     [this, l](const model::HookPoint&, const at::Tensor& x) {
                       const EntropyStats s = ComputeMatrixEntropy(x);
                       layers_[l].entropy.Add(s.entropy);
                       layers_[l].anisotropy.Add(s.anisotropy);
                       layers_[l].normalized.Add(s.normalized);
                     });
    }
  }

  bool LastLayerAfterFinalNorm() const override { return spec_.final_norm_last_layer; }

  void Fill(int32_t layer, job::LayerResult* out) const override {
    if (layer < 0) return;
    job::MatrixEntropyLayer r;
    r.entropy = layers_[layer].entropy.Get();
    r.anisotropy = layers_[layer].anisotropy.Get();
    if (spec_.normalized) r.normalized_entropy = layers_[layer].normalized.Get();
    r.post_final_norm = spec_.final_norm_last_layer && layer == dims_.n_layers - 1;
    out->matrix_entropy = std::move(r);
  }

  void Summarize(std::map<std::string, double>* m) const override {
    if (layers_.empty() || layers_[0].entropy.n() == 0) return;
    int32_t lo = 0, hi = 0;
    for (int32_t l = 1; l < static_cast<int32_t>(layers_.size()); ++l) {
      if (layers_[l].entropy.mean() < layers_[lo].entropy.mean()) lo = l;
      if (layers_[l].anisotropy.mean() > layers_[hi].anisotropy.mean()) hi = l;
    }
    (*m)["entropy.min"] = layers_[lo].entropy.mean();
    (*m)["entropy.min_layer"] = lo;
    (*m)["anisotropy.max"] = layers_[hi].anisotropy.mean();
  }

 private:
  struct Layer {
    StatAcc entropy, anisotropy, normalized;
  };
  job::MatrixEntropySpec spec_;
  ModelDims dims_;
  std::vector<Layer> layers_;
};

}  // namespace matrix_entropy_internal

std::unique_ptr<LayerAnalysis> MakeMatrixEntropy(const job::MatrixEntropySpec& spec, const ModelDims& dims) {
  return std::make_unique<matrix_entropy_internal::MatrixEntropy>(spec, dims);
}

}  // namespace sinkscope::analysis
