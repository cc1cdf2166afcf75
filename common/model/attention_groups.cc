// Attention groups of a packed forward (see attention_groups.h).
#include "common/model/attention_groups.h"

#include <algorithm>
#include <numeric>

namespace sinkscope::model {

std::vector<AttentionGroup> PlanAttentionGroups(const std::vector<int64_t>& lengths, AttentionBatching batching) {
  std::vector<AttentionGroup> groups;
  const size_t n = lengths.size();
  if (batching == AttentionBatching::kEqualLength) {
    for (size_t s = 0; s < n;) {
      AttentionGroup g;
      g.len = lengths[s];
      for (; s < n && lengths[s] == g.len; ++s) g.members.push_back(s);
      groups.push_back(std::move(g));
    }
    return groups;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  for (size_t i = 0; i < n;) {
    AttentionGroup g;
    g.len = lengths[order[i]];
    const int64_t square = g.len * g.len;
    int64_t own = 0;  // Σ Tᵢ² of the members
    for (; i < n; ++i) {
      const int64_t t = lengths[order[i]];
      const int64_t padded = static_cast<int64_t>(g.members.size() + 1) * square;
      const int64_t with = own + t * t;
      if (!g.members.empty() && padded - with > std::max(with / 4, kAttentionFreePadding)) break;
      g.members.push_back(order[i]);
      own = with;
    }
    std::sort(g.members.begin(), g.members.end());
    groups.push_back(std::move(g));
  }
  // A group of consecutive prompts of one length is read in place; any other from the padded gather.
  int64_t gathered = 0;
  for (AttentionGroup& g : groups) {
    bool slice = true;
    for (size_t i = 0; i < g.members.size(); ++i)
      slice = slice && g.members[i] == g.members[0] + i && lengths[g.members[i]] == g.len;
    if (slice) continue;
    g.pad_offset = gathered;
    gathered += static_cast<int64_t>(g.members.size()) * g.len;
  }
  return groups;
}

}  // namespace sinkscope::model
