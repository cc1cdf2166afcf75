#include "common/model/segments.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

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

namespace {

// Runs interventions + observers; checks that interventions kept the shape, and restores dtype/device.
absl::StatusOr<at::Tensor> Checked(const HookSet& h, const std::string& name, int layer, const at::Tensor& x,
                                   int64_t q_offset) {
  at::Tensor y = h.Run(name, layer, x, q_offset);
  if (!y.defined())
    return absl::InvalidArgumentError(absl::StrCat("intervention on ", name, " returned an undefined tensor"));
  if (y.sizes() != x.sizes())
    return absl::InvalidArgumentError(absl::StrCat("intervention on ", name, " returned shape ", ShapeStr(y.sizes()),
                                                   ", expected ", ShapeStr(x.sizes())));
  if (y.scalar_type() != x.scalar_type() || y.device() != x.device()) y = y.to(x.device(), x.scalar_type());
  return y;
}

}  // namespace

SegmentHooks::SegmentHooks(const Segments& seg, int64_t n_layers) : seg_(seg) {
  for (const HookSet* h : seg.hooks) active_ |= h != nullptr && !h->empty();
  if (!active_) return;
  names_.resize(n_layers);
  wanted_.resize(n_layers);
  for (int64_t l = 0; l < n_layers; ++l)
    for (const HookInfo& info : kLayerHooks) {
      const size_t i = static_cast<size_t>(info.id);
      names_[l][i] = HookName(l, info.id);
      for (const HookSet* h : seg.hooks) wanted_[l][i] = wanted_[l][i] || (h && h->Wants(names_[l][i]));
    }
}

absl::StatusOr<at::Tensor> SegmentHooks::At(int64_t layer, HookId id, const at::Tensor& x) const {
  if (!Wants(layer, id)) return x;
  return RunAll(names_[layer][static_cast<size_t>(id)], static_cast<int>(layer), x);
}

absl::StatusOr<at::Tensor> SegmentHooks::AtModel(const char* name, const at::Tensor& x) const {
  if (!active_) return x;
  return RunAll(std::string(name), -1, x);
}

absl::Status SegmentHooks::Pattern(int64_t layer, size_t s, const at::Tensor& p, int64_t q0) const {
  const std::string& name = names_[layer][static_cast<size_t>(HookId::kPattern)];
  if (seg_.hooks[s] == nullptr || !seg_.hooks[s]->Wants(name)) return absl::OkStatus();
  return Checked(*seg_.hooks[s], name, static_cast<int>(layer), p, q0).status();
}

absl::StatusOr<at::Tensor> SegmentHooks::RunAll(const std::string& name, int layer, const at::Tensor& x) const {
  if (seg_.size() == 1) {
    if (seg_.hooks[0] == nullptr || !seg_.hooks[0]->Wants(name)) return x;
    return Checked(*seg_.hooks[0], name, layer, x, 0);
  }
  at::Tensor out = x;
  for (size_t s = 0; s < seg_.size(); ++s) {
    const HookSet* h = seg_.hooks[s];
    if (h == nullptr || !h->Wants(name)) continue;
    ASSIGN_OR_RETURN(at::Tensor y, Checked(*h, name, layer, x.narrow(0, seg_.off[s], seg_.len[s]), 0));
    if (!h->Intervenes(name)) continue;
    if (out.is_same(x)) out = x.clone();  // the first replacement: other prompts' rows stay as they were
    out.narrow(0, seg_.off[s], seg_.len[s]).copy_(y);
  }
  return out;
}

}  // namespace sinkscope::model
