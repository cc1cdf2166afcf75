#include "common/model/segments.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sinkscope::model {

absl::StatusOr<Segments> MakeSegments(const LlamaConfig& cfg, int64_t T, const ForwardOptions& opts) {
  Segments seg;
  if (opts.segments.empty()) {
    seg.len = {T};
    seg.hooks = {opts.hooks};
  } else {
    if (!opts.segment_hooks.empty() && opts.segment_hooks.size() != opts.segments.size())
      return absl::InvalidArgumentError(absl::StrCat("segment_hooks has ", opts.segment_hooks.size(),
                                                     " entries for ", opts.segments.size(), " segments"));
    seg.len = opts.segments;
    seg.hooks = opts.segment_hooks;
    seg.hooks.resize(seg.len.size(), nullptr);
  }
  int64_t off = 0;
  for (size_t s = 0; s < seg.len.size(); ++s) {
    if (seg.len[s] < 1)
      return absl::InvalidArgumentError(absl::StrCat("segments[", s, "] = ", seg.len[s], "; each prompt needs a token"));
    if (seg.len[s] > cfg.max_position_embeddings && !opts.allow_beyond_max_positions)
      return absl::InvalidArgumentError(absl::StrCat(seg.size() == 1 ? "ids has T=" : "a prompt has T=", seg.len[s],
                                                     " tokens, more than max_position_embeddings=",
                                                     cfg.max_position_embeddings));
    seg.off.push_back(off);
    off += seg.len[s];
    seg.max_len = std::max(seg.max_len, seg.len[s]);
  }
  if (off != T)
    return absl::InvalidArgumentError(absl::StrCat("segments sum to ", off, " tokens, ids has T=", T));
  seg.groups = PlanAttentionGroups(seg.len, opts.attn_batching);
  if (opts.attn_batching == AttentionBatching::kEqualLength) return seg;  // slices, in order: nothing to gather
  // Rows: a padded group's members are gathered, each padded to the group's length (repeating its first row).
  bool in_order = true;
  int64_t out = 0;  // the group's first row in the concatenated outputs
  size_t next = 0;  // the segment a slice in forward order would start at
  std::vector<int64_t> unpad(T);
  for (const AttentionGroup& g : seg.groups) {
    if (g.pad_offset >= 0)
      for (size_t m : g.members)
        for (int64_t t = 0; t < g.len; ++t) seg.pad_rows.push_back(seg.off[m] + (t < seg.len[m] ? t : 0));
    in_order = in_order && g.pad_offset < 0 && g.members[0] == next;
    next = g.members.back() + 1;
    for (size_t i = 0; i < g.members.size(); ++i)
      for (int64_t t = 0; t < seg.len[g.members[i]]; ++t)
        unpad[seg.off[g.members[i]] + t] = out + static_cast<int64_t>(i) * g.len + t;
    out += static_cast<int64_t>(g.members.size()) * g.len;
  }
  if (!in_order) seg.unpad_rows = std::move(unpad);
  return seg;
}

}  // namespace sinkscope::model
