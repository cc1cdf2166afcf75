// Matrix entropy; formulas in matrix_entropy.h. Compiled through analyses_unity.cc.
#include "common/analysis/matrix_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <deque>
#include <future>
#include <limits>
#include <map>

namespace sinkscope::analysis {

namespace {

constexpr double kClamp = 1e-10;  // the study's clamp on p_j

EntropyStats NotFinite() {  // NaN/inf activations: report them, never a plausible-looking number
  EntropyStats s;
  s.entropy = s.anisotropy = s.normalized = std::numeric_limits<double>::quiet_NaN();
  return s;
}

// H, p_1 and H / ln(min(T, d)) from the ascending eigenvalues e[0..n) of the Gram matrix of a T×d X, F = ‖X‖²_F.
EntropyStats FromSpectrum(const double* e, int64_t n, double F, int64_t T, int64_t d) {
  EntropyStats s;
  double H = 0, p1 = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::max(std::max(e[j], 0.0) / F, kClamp);
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

// The smaller of the two Gram matrices (same non-zero spectrum), float64.
at::Tensor Gram(const at::Tensor& x) { return x.size(0) <= x.size(1) ? at::mm(x, x.t()) : at::mm(x.t(), x); }

}  // namespace

EntropyStats ComputeMatrixEntropy(const at::Tensor& x_in) {
  at::Tensor x = x_in.reshape({x_in.size(0), -1}).to(at::kDouble);
  const int64_t T = x.size(0), d = x.size(1);
  const double F = x.pow(2).sum().item<double>();
  if (!std::isfinite(F)) return NotFinite();
  if (F < 1e-10) return EntropyStats{};  // the study's fallback for a degenerate X: (0, 1)
  at::Tensor ev = at::linalg_eigvalsh(Gram(x)).cpu().contiguous();  // ascending
  return FromSpectrum(ev.data_ptr<double>(), ev.numel(), F, T, d);
}

at::Tensor HostParallelEigvalsh(const at::Tensor& grams) {
  const int64_t B = grams.size(0);
  at::Tensor out = at::empty({B, grams.size(1)}, grams.options());
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) out[b].copy_(at::linalg_eigvalsh(grams[b]));
  });
  return out;
}

namespace matrix_entropy_internal {

// A device tensor copied into page-locked host memory, which the GPU writes by DMA at full speed (a pageable copy
// is staged through a driver buffer; the stacked Gram matrices of a 64-prompt pack at T = 512 are 128 MiB a layer).
// Plain .cpu() if pinned memory cannot be had.
at::Tensor ToPinnedHost(const at::Tensor& t) {
  if (t.is_cpu()) return t;
  try {
    at::Tensor h = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
    h.copy_(t);
    return h;
  } catch (const c10::Error&) {
    return t.cpu();
  }
}

}  // namespace matrix_entropy_internal

at::Tensor BatchEigvalsh(const at::Tensor& grams) {
  if (grams.is_cpu()) return at::linalg_eigvalsh(grams);
  return HostParallelEigvalsh(matrix_entropy_internal::ToPinnedHost(grams));
}

namespace matrix_entropy_internal {

class MatrixEntropy final : public LayerAnalysis {
 public:
  MatrixEntropy(const job::MatrixEntropySpec& spec, const ModelDims& dims, bool overlap)
      : spec_(spec), dims_(dims), overlap_(overlap), layers_(dims.n_layers) {}

  // Observers only form each prompt's Gram matrix and ‖X‖²_F on the device; Flush computes the spectra of all
  // pending ones (every prompt of a packed forward at a layer) in one batched eigvalsh per matrix size, with one
  // copy to the host, and accumulates them in prompt order — what one ComputeMatrixEntropy per prompt gives.
  // With overlap, the spectra are solved on a background thread and accumulated by Settle, batch after batch.
  void Register(const PromptCtx& p, model::HookSet* hooks) override {
    for (int64_t l = 0; l < dims_.n_layers; ++l) {
      const bool final_norm = spec_.final_norm_last_layer && l == dims_.n_layers - 1;
      hooks->Observe(final_norm ? std::string(model::kFinalNormHook) : model::HookName(l, model::HookId::kResidPost),
                     [this, l, prompt = p.index](const model::HookPoint&, const at::Tensor& x_in) {
                       at::Tensor x = x_in.reshape({x_in.size(0), -1}).to(at::kDouble);
                       pending_.push_back({prompt, l, Gram(x), x.pow(2).sum(), x.size(0), x.size(1)});
                     });
    }
  }

  void Flush() override {
    if (pending_.empty()) return;
    Batch b;
    b.items = std::move(pending_);
    pending_.clear();
    std::vector<at::Tensor> fs;
    for (const Pending& p : b.items) {
      fs.push_back(p.F);
      b.layer = std::max(b.layer, p.layer);
    }
    b.F = at::stack(fs).cpu().contiguous();
    const double* f = b.F.data_ptr<double>();
    // Spectra of the well-formed matrices, batched by size (NaN input would fail the eigensolver).
    std::map<int64_t, std::vector<size_t>> by_size;
    for (size_t i = 0; i < b.items.size(); ++i)
      if (std::isfinite(f[i]) && f[i] >= 1e-10) by_size[b.items[i].gram.size(0)].push_back(i);
    const bool on_host = b.items[0].gram.is_cpu();
    std::vector<at::Tensor> grams;  // one [B, n, n] stack per size
    for (const auto& [n, idx] : by_size) {
      std::vector<at::Tensor> g;
      for (size_t i : idx) g.push_back(b.items[i].gram);
      b.groups.push_back(idx);
      grams.push_back(overlap_ ? ToPinnedHost(at::stack(g)) : at::stack(g));
    }
    for (Pending& p : b.items) p.gram = at::Tensor();  // the stacks hold them now
    if (!overlap_) {
      Merge(b, Solve(grams, on_host));
      return;
    }
    b.spectra = std::async(std::launch::async, [grams = std::move(grams), on_host] { return Solve(grams, on_host); });
    inflight_.push_back(std::move(b));
  }

  void Settle(int64_t through_layer) override {
    while (!inflight_.empty() && inflight_.front().layer <= through_layer) {
      Batch b = std::move(inflight_.front());
      inflight_.pop_front();
      Merge(b, b.spectra.get());
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

  void FillPrompt(int32_t prompt, int32_t layer, job::PromptLayer* out) const override {
    auto it = prompt_.find({prompt, layer});
    if (it == prompt_.end()) return;
    out->entropy = it->second.entropy;
    out->anisotropy = it->second.anisotropy;
  }

  void Summarize(std::map<std::string, double>* m) const override {
    if (layers_.empty() || layers_[0].entropy.n() == 0) return;
    const int32_t n = static_cast<int32_t>(layers_.size());
    const int32_t lo = ArgBest(n, [&](int32_t l) { return layers_[l].entropy.mean(); }, /*lowest=*/true);
    const int32_t hi = ArgBest(n, [&](int32_t l) { return layers_[l].anisotropy.mean(); });
    (*m)["entropy.min"] = layers_[lo].entropy.mean();
    (*m)["entropy.min_layer"] = lo;
    (*m)["anisotropy.max"] = layers_[hi].anisotropy.mean();
  }

 private:
  struct Layer {
    StatAcc entropy, anisotropy, normalized;
  };
  struct Pending {  // one prompt's layer, waiting for Flush
    int32_t prompt;
    int64_t layer;
    at::Tensor gram, F;  // float64 on the model's device
    int64_t T, d;
  };
  struct Batch {  // one Flush's prompts: their ‖X‖²_F on the host, their spectra (solved or being solved)
    std::vector<Pending> items;
    int64_t layer = -1;                       // the highest layer among items
    at::Tensor F;                             // [items] float64, CPU
    std::vector<std::vector<size_t>> groups;  // indices into items of each solved stack, by matrix size
    std::future<std::vector<at::Tensor>> spectra;
  };

  // Ascending spectra of each stack, on the host: what BatchEigvalsh gives for a stack on its model's device (a CPU
  // model: `on_host`), whether the stack is still there or already copied to the host.
  static std::vector<at::Tensor> Solve(const std::vector<at::Tensor>& grams, bool on_host) {
    std::vector<at::Tensor> out;
    for (const at::Tensor& g : grams)
      out.push_back((on_host ? at::linalg_eigvalsh(g) : HostParallelEigvalsh(ToPinnedHost(g))).contiguous());
    return out;
  }

  // Accumulates a batch, prompt by prompt in the order the observers ran.
  void Merge(const Batch& b, const std::vector<at::Tensor>& ev) {
    std::vector<at::Tensor> spectrum(b.items.size());
    for (size_t g = 0; g < b.groups.size(); ++g)
      for (size_t k = 0; k < b.groups[g].size(); ++k) spectrum[b.groups[g][k]] = ev[g][static_cast<int64_t>(k)];
    const double* f = b.F.data_ptr<double>();
    for (size_t i = 0; i < b.items.size(); ++i) {
      const Pending& p = b.items[i];
      EntropyStats s;
      if (!std::isfinite(f[i])) {
        s = NotFinite();
      } else if (spectrum[i].defined()) {
        s = FromSpectrum(spectrum[i].data_ptr<double>(), spectrum[i].numel(), f[i], p.T, p.d);
      }  // else degenerate X: the study's (0, 1)
      layers_[p.layer].entropy.Add(s.entropy);
      layers_[p.layer].anisotropy.Add(s.anisotropy);
      layers_[p.layer].normalized.Add(s.normalized);
      if (per_prompt_) prompt_[{p.prompt, static_cast<int32_t>(p.layer)}] = s;
    }
  }

  std::vector<Pending> pending_;
  std::deque<Batch> inflight_;  // with overlap: flushed batches not yet merged, oldest first
  std::map<std::pair<int32_t, int32_t>, EntropyStats> prompt_;  // (prompt, layer), with KeepPerPrompt()
  job::MatrixEntropySpec spec_;
  ModelDims dims_;
  bool overlap_;
  std::vector<Layer> layers_;
};

}  // namespace matrix_entropy_internal

std::unique_ptr<LayerAnalysis> MakeMatrixEntropy(const job::MatrixEntropySpec& spec, const ModelDims& dims,
                                                 bool overlap) {
  return std::make_unique<matrix_entropy_internal::MatrixEntropy>(spec, dims, overlap);
}

}  // namespace sinkscope::analysis
