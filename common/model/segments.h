// The prompts of one (packed) forward: lengths, offsets in the packed sequence and hook sets, checked against the
// model's context (no tensor work). Used by the forward in llama.cc.
#pragma once

#include <cstdint>
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

}  // namespace sinkscope::model
