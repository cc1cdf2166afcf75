// The prompts of one (packed) forward: lengths, offsets in the packed sequence and hook sets, checked against the
// model's context, their attention groups, and the running of each prompt's hooks on its own rows. Used by the
// forward in llama.cc.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/llama.h"

namespace sinkscope::model {

struct Segments {
  std::vector<int64_t> len, off;
  std::vector<const HookSet*> hooks;  // one per prompt; null = no hooks
  int64_t max_len = 0;
  std::vector<AttentionGroup> groups;
  // Padded groups' input rows: forward row of each padded row, group after group, member after member (padding
  // rows repeat the member's first row; their scores are masked or dropped). Empty when no group is padded.
  std::vector<int64_t> pad_rows;
  // Forward row r's output is row unpad_rows[r] of the groups' outputs concatenated in group order; empty when that
  // concatenation is already the forward's order (no padding, groups in order).
  std::vector<int64_t> unpad_rows;
  size_t size() const { return len.size(); }
};

// One segment of T tokens (opts.segments empty: opts.hooks), or opts.segments with opts.segment_hooks, grouped for
// attention by opts.attn_batching.
// InvalidArgument for an empty prompt, one longer than max_position_embeddings (unless
// opts.allow_beyond_max_positions), mismatched hook lists or lengths that do not sum to T.
absl::StatusOr<Segments> MakeSegments(const LlamaConfig& cfg, int64_t T, const ForwardOptions& opts);

// Hook plumbing for one forward over `seg` (which it refers to). Names are built only for points that some prompt
// wants.
class SegmentHooks {
 public:
  SegmentHooks(const Segments& seg, int64_t n_layers);
  bool Wants(int64_t layer, HookId id) const { return active_ && wanted_[layer][static_cast<size_t>(id)]; }
  // Per-layer point: each prompt's hooks run on its rows of x [ΣT, ...]; interventions replace those rows.
  absl::StatusOr<at::Tensor> At(int64_t layer, HookId id, const at::Tensor& x) const;
  // Model-level point (hook_embed, ln_final.hook_normalized).
  absl::StatusOr<at::Tensor> AtModel(const char* name, const at::Tensor& x) const;
  // hook_pattern of prompt s: p [H, tq, T_s] for query rows [q0, q0 + tq). Observe-only.
  absl::Status Pattern(int64_t layer, size_t s, const at::Tensor& p, int64_t q0) const;

 private:
  absl::StatusOr<at::Tensor> RunAll(const std::string& name, int layer, const at::Tensor& x) const;

  const Segments& seg_;
  bool active_ = false;
  std::vector<std::array<std::string, kNumLayerHooks>> names_;
  std::vector<std::array<bool, kNumLayerHooks>> wanted_;
};

}  // namespace sinkscope::model
