// Matrix (representation) entropy of the residual stream (Queipo-style as the study; docs/study.md §4.8, §6.3, §6.9).
//
//   X = blocks.l.hook_resid_post ∈ R^{T×d} in float64 (ln_final.hook_normalized for the last layer with
//       final_norm_last_layer, as residual_stats.h)
//   λ_1 ≥ … ≥ λ_T  eigenvalues of the UNCENTRED Gram matrix X Xᵀ (eigvalsh, float64, clamped ≥ 0; computed from
//                  the d×d XᵀX when T > d — same non-zero spectrum)
//   F   = ‖X‖²_F = Σ_j λ_j
//   p_j = max(λ_j / F, 1e-10)                       (the study's clamp; each zero eigenvalue adds 2.3e-9 nats)
//   H   = −Σ_{j=1}^{T} p_j ln p_j                   (nats, Shannon; NOT normalised, as the study)
//   anisotropy = p_1
//   normalized = H / ln(min(T, d))                  (only when requested; 0 when min(T, d) = 1)
//   degenerate F < 1e-10: H = 0, anisotropy = 1     (the study's fallback); non-finite X: NaN (not hidden)
// Per layer over prompts: mean ± population std. Summary: "entropy.min", "entropy.min_layer" (of the per-layer
// means), "anisotropy.max".
#pragma once

#include <memory>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

struct EntropyStats {
  double entropy = 0, anisotropy = 1, normalized = 0;
};
// x: [T, d] any float dtype.
EntropyStats ComputeMatrixEntropy(const at::Tensor& x);

// Ascending eigenvalues [B, n] (CPU, float64) of a batch [B, n, n] of symmetric float64 matrices. A CPU batch is
// one batched at::linalg_eigvalsh; a GPU batch is copied to the host and solved by HostParallelEigvalsh, because
// torch runs a float64 batch of n > 32 on cuSOLVER one syevd at a time (gpu-check's peak step times both ways).
at::Tensor BatchEigvalsh(const at::Tensor& grams);
// A host batch solved one matrix per intra-op thread (the same LAPACK routine per matrix as the batched call).
at::Tensor HostParallelEigvalsh(const at::Tensor& grams);

// `overlap`: Flush() copies each batch to the host and solves it on a background thread while the device goes on
// with the next layer; Settle() merges the solved batches (in order, bit for bit what solving at once gives).
std::unique_ptr<LayerAnalysis> MakeMatrixEntropy(const job::MatrixEntropySpec& spec, const ModelDims& dims,
                                                 bool overlap = false);

}  // namespace sinkscope::analysis
