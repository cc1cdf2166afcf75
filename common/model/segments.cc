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
  return seg;
}

}  // namespace sinkscope::model
