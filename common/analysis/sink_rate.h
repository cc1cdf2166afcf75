// Attention sink rate (Queipo-de-Llano et al. as implemented by the study; docs/study.md §4.6, §6.7, §6.8).
//
//   A[l,h,t,j]   attention probability of query row t on key j (causal, j ≤ t), float32
//   score[l,h]   = (1/|R|) Σ_{t∈R} A[l,h,t,0]        mean attention mass on position 0 (BOS)
//                  R = {0..T−1}  QUERY_ROWS_ALL (study; row 0 always contributes 1, a (1−s)/T upward bias)
//                  R = {1..T−1}  QUERY_ROWS_EXCLUDE_BOS
//   sink_rate[l] = (1/H) Σ_h 1[score[l,h] ≥ τ]        τ = 0.3 by default (note: ≥, as the study)
//
// Sources of A:
//   ATTENTION_SOURCE_MODEL      blocks.l.attn.hook_pattern: the model's own fp32 softmax (rotary applied for RoPE
//                               models, QK-norm and softmax_scale honoured), delivered in query-row chunks.
//   ATTENTION_SOURCE_PRE_ROTARY the study's manual method (rerun_drope_metrics.compute_sink_rate_manual):
//                               A = softmax(q kᵀ · hd^−½ + causal mask) in fp32 from blocks.l.attn.hook_q / hook_k,
//                               i.e. PRE-rotary projections (for RoPE models this is not the model's attention),
//                               computed here in query-row chunks (≤ 4M scores at a time).
// Per layer over prompts: sink_rate mean ± population std; head_scores[h] = mean over prompts of score[l,h].
// A prompt with no selected rows (T = 1 with EXCLUDE_BOS) does not contribute (Stat.n counts contributors).
// Summary: "sink_rate.mean" = mean over layers of the per-layer mean.
#pragma once

#include <memory>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

std::unique_ptr<LayerAnalysis> MakeSinkRate(const job::SinkRateSpec& spec, const ModelDims& dims);

// Σ over the selected query rows of A[h,t,0] for the study's manual pre-rotary attention; q [T,H,hd],
// k [T,Hkv,hd] (any float dtype, computed in fp32; query head h uses kv head h / (H/Hkv)). Returns [H] float64 on
// q's device and sets *rows = |R|.
at::Tensor PreRotaryBosAttentionSums(const at::Tensor& q, const at::Tensor& k, bool exclude_bos, int64_t* rows);

}  // namespace sinkscope::analysis
