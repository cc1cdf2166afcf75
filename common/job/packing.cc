// Packing prompts into forwards (see packing.h).
#include "common/job/packing.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sinkscope::job {

int64_t ForwardBytes(const model::LlamaConfig& c, const std::vector<int64_t>& lengths, int64_t elem, int64_t chunk,
                     model::AttentionBatching batching) {
  int64_t tokens = 0;
  for (int64_t n : lengths) tokens += n;
  const int64_t qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim;
  // Per token: residual + normed input + attention output (3·d), q/k/v (and their rotated copies), the MLP's gate, up
  // and product (3·I), in the compute dtype; fp32 copies of q and k for the scores.
  const int64_t per_token = (3 * c.hidden_size + 2 * qkv + 3 * c.intermediate_size) * elem + 2 * qkv * 4;
  int64_t attention = 0, padded_rows = 0;
  for (const model::AttentionGroup& g : model::PlanAttentionGroups(lengths, batching)) {
    const int64_t members = static_cast<int64_t>(g.members.size());
    const int64_t rows = chunk > 0 ? std::min(chunk, g.len) : g.len;
    attention = std::max(attention, 3 * members * c.num_attention_heads * rows * g.len * 4);
    if (g.pad_offset >= 0) padded_rows += members * g.len;
  }
  // Padded rows: the gathered q/k/v (compute dtype) and their fp32 copies, and the group outputs (H·hd each).
  const int64_t per_padded_row = (qkv + c.num_attention_heads * c.head_dim) * elem + 2 * qkv * 4;
  return tokens * per_token + padded_rows * per_padded_row + attention;
}

int64_t ResidualBytes(const model::LlamaConfig& c, int64_t tokens, int64_t elem) {
  return tokens * (c.hidden_size + 2 * c.head_dim) * elem;
}

absl::Status PackPrompts(const model::LlamaConfig& c, const std::vector<int64_t>& lengths, int64_t elem,
                         const PackBudget& budget, std::vector<std::pair<int32_t, int32_t>>* packs) {
  constexpr int64_t kChunk = 512;  // model::ForwardOptions::attn_query_chunk's default, which jobs use
  const int32_t n = static_cast<int32_t>(lengths.size());
  for (int32_t first = 0; first < n;) {
    std::vector<int64_t> pack = {lengths[first]};
    const int64_t alone = ForwardBytes(c, pack, elem, kChunk, budget.attention);
    if (budget.bytes > 0 && alone > budget.bytes)
      return absl::FailedPreconditionError(absl::StrFormat(
          "prompt %d (%d tokens) needs about %.2f GiB of activations in one forward, more than the model's budget "
          "forward_memory_bytes=%.2f GiB (sinkscope model NAME shows it): it can never run (shorten it with "
          "max_tokens)",
          first, lengths[first], alone / double(1 << 30), budget.bytes / double(1 << 30)));
    int64_t tokens = lengths[first];
    while (first + static_cast<int32_t>(pack.size()) < n) {
      const int64_t next = lengths[first + pack.size()];
      if (tokens + next > budget.tokens) break;
      pack.push_back(next);
      if (budget.bytes > 0 && ForwardBytes(c, pack, elem, kChunk, budget.attention) > budget.bytes) {
        pack.pop_back();
        break;
      }
      tokens += next;
    }
    packs->emplace_back(first, static_cast<int32_t>(pack.size()));
    first += static_cast<int32_t>(pack.size());
  }
  return absl::OkStatus();
}

}  // namespace sinkscope::job
