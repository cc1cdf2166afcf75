// How a packed forward groups its prompts for attention (ForwardOptions::attn_batching). Torch-free: the planner's
// memory estimate (job/packing.h) groups prompts the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sinkscope::model {

// How a packed forward batches its prompts' attention. Either way each prompt attends only to itself, causally.
enum class AttentionBatching {
  // Runs of consecutive prompts of equal length attend as one batch; no padding.
  kEqualLength,
  // Prompts are grouped by length, longest first, and each group is padded to its longest prompt, so that prompts of
  // different lengths share one batch: a few batches per forward instead of one per distinct length. Each batch costs
  // ~35 ATen ops (~15 kernel launches) per layer, which on a GPU short prompts of varied lengths are bound by. A
  // group grows while its padded score entries (G·L²) exceed its prompts' own (Σ Tᵢ²) by at most a quarter, or by
  // at most kAttentionFreePadding entries. Padded key columns are masked and padded query rows dropped; numbers
  // equal kEqualLength's up to fp32 rounding (the GEMMs have other shapes).
  kPadded,
};
inline constexpr int64_t kAttentionFreePadding = int64_t{1} << 20;

// Prompts whose attention runs as one batch [G, H, len, len] (AttentionBatching).
struct AttentionGroup {
  std::vector<size_t> members;  // segment indices, ascending
  int64_t len = 0;              // the longest member's length: every member is padded to it
  // Where the group's q/k/v rows come from: -1 = rows [off[members[0]], + G·len) of the forward (consecutive
  // prompts of length len: a slice), else this offset into the forward's padded gather (Segments::pad_rows), in
  // which the gathered groups follow each other in order.
  int64_t pad_offset = -1;
};

// The attention groups of prompts with these lengths, in the order they run (torch-free: the planner's memory
// estimate uses it too). kEqualLength: runs of consecutive equal lengths, in order. kPadded: see AttentionBatching.
std::vector<AttentionGroup> PlanAttentionGroups(const std::vector<int64_t>& lengths, AttentionBatching batching);

}  // namespace sinkscope::model
