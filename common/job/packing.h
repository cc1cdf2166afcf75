// How a job's prompts are grouped into forwards: consecutive prompts packed greedily (prompt order kept, so every
// accumulator sees the same sequence as one prompt per forward) under two budgets, tokens and activation memory.
// Torch-free.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/model/attention_groups.h"
#include "common/model/config.h"

namespace sinkscope::job {

// Bytes of activations one forward over prompts of these lengths keeps alive at its peak, with `elem` bytes per
// element of the compute dtype: the residual stream and a layer's q/k/v/MLP activations for every token, the padded
// copies of q/k/v and attention outputs when `batching` pads, plus the attention of the largest group (fp32 scores,
// probabilities and one padded copy per query chunk of `chunk` rows). An estimate for admission and packing, not an
// allocator.
int64_t ForwardBytes(const model::LlamaConfig& c, const std::vector<int64_t>& lengths, int64_t elem, int64_t chunk,
                     model::AttentionBatching batching = model::AttentionBatching::kEqualLength);

// Bytes a forward over `tokens` tokens carries between layers when it runs layer by layer: the residual stream
// [tokens, d] and the rotary cos/sin tables [tokens, head_dim] each, in the compute dtype.
int64_t ResidualBytes(const model::LlamaConfig& c, int64_t tokens, int64_t elem);

struct PackBudget {
  int64_t tokens = 0;  // <= 1: one prompt per forward
  int64_t bytes = 0;   // 0: no memory budget
  model::AttentionBatching attention = model::AttentionBatching::kEqualLength;  // how ForwardBytes groups attention
};

// [first, count) of each forward over `lengths`. FailedPrecondition when one prompt alone exceeds budget.bytes
// (the job can never fit), naming the prompt, its length and both sizes.
absl::Status PackPrompts(const model::LlamaConfig& c, const std::vector<int64_t>& lengths, int64_t elem,
                         const PackBudget& budget, std::vector<std::pair<int32_t, int32_t>>* packs);

}  // namespace sinkscope::job
