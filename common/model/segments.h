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
  size_t size() const { return len.size(); }
};

// One segment of T tokens (opts.segments empty: opts.hooks), or opts.segments with opts.segment_hooks.
// InvalidArgument for an empty prompt, one longer than max_position_embeddings (unless
// opts.allow_beyond_max_positions), mismatched hook lists or lengths that do not sum to T.
absl::StatusOr<Segments> MakeSegments(const LlamaConfig& cfg, int64_t T, const ForwardOptions& opts);

}  // namespace sinkscope::model
