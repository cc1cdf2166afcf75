// Prefix reuse (see prefix_reuse.h).
#include "common/job/prefix_reuse.h"

#include <algorithm>

#include "common/analysis/interventions.h"
#include "common/job/packing.h"

namespace sinkscope::job {

ResidualKeeper::ResidualKeeper(const Plan& plan, const model::LlamaConfig& cfg, const analysis::ModelDims& dims,
                               bool one_wave)
    : cfg_(cfg), budget_(plan.residual_budget) {
  const PerplexitySpec* ppl = plan.perplexity();
  if (ppl == nullptr) return;
  for (const Intervention& iv : ppl->interventions) {
    model::HookSet hooks;  // installed only to ask where the intervention first acts
    if (const auto* b = std::get_if<BosMlpAblation>(&iv.kind)) {
      if (!b->layer) {
        if (one_wave && std::find(spike_rules_.begin(), spike_rules_.end(), b->spike_rule) == spike_rules_.end())
          spike_rules_.push_back(b->spike_rule);
        continue;
      }
      analysis::AddBosMlpAblation(*b->layer, &hooks);
    } else if (const auto* h = std::get_if<HeadAblation>(&iv.kind)) {
      analysis::AddHeadAblation(*h, dims, &hooks);
    } else if (const auto* e = std::get_if<std::vector<ActivationEdit>>(&iv.kind)) {
      analysis::AddActivationEdits(*e, dims, &hooks);
    } else {
      continue;  // Q/K disruptions and top-k replacements act from their first kept layer / layer 0
    }
    const int64_t first = hooks.FirstLayer(dims.n_layers);
    if (first > 0 && first < dims.n_layers) known_.insert(static_cast<int32_t>(first));
  }
}

void ResidualKeeper::BeforeLayer(int32_t l, const std::vector<const Pass*>& packs,
                                 const std::vector<const at::Tensor*>& entering) {
  if (l == 0 || (!known_.count(l) && spike_rules_.empty())) return;
  // The budget holds what the wave carries (as the planner counts it) and what is kept.
  int64_t carried = 0, wave = 0;
  for (const at::Tensor* x : entering) {
    carried += ResidualBytes(cfg_, x->size(0), static_cast<int64_t>(x->element_size()));
    wave += x->numel() * static_cast<int64_t>(x->element_size());
  }
  if (budget_ > 0 && carried + bytes_ + wave > budget_) return;
  for (size_t k = 0; k < packs.size(); ++k) kept_[l][packs[k]->first_prompt] = Kept{packs[k]->num_prompts, *entering[k]};
  bytes_ += wave;
}

void ResidualKeeper::Drop(int32_t l) {
  auto it = kept_.find(l);
  if (it == kept_.end()) return;
  for (const auto& [first, k] : it->second) bytes_ -= k.x.numel() * static_cast<int64_t>(k.x.element_size());
  kept_.erase(it);
}

void ResidualKeeper::AfterLayer(int32_t l, const analysis::ResidualStats* resid) {
  if (spike_rules_.empty() || resid == nullptr) return;
  // Layers below l are final here; l itself may still wait for the final norm (last layer), so it stays.
  std::set<int32_t> keep = known_;
  for (SpikeRule r : spike_rules_) keep.insert(resid->SpikeLayer(r, l));
  std::vector<int32_t> drop;
  for (const auto& [layer, packs] : kept_)
    if (layer < l && !keep.count(layer)) drop.push_back(layer);
  for (int32_t layer : drop) Drop(layer);
}

void ResidualKeeper::EndBaseline(const analysis::ResidualStats* resid) {
  std::set<int32_t> keep = known_;
  if (resid != nullptr)
    for (SpikeRule r : spike_rules_) keep.insert(resid->SpikeLayer(r));
  std::vector<int32_t> drop;
  for (const auto& [layer, packs] : kept_)
    if (!keep.count(layer)) drop.push_back(layer);
  for (int32_t layer : drop) Drop(layer);
}

int32_t ResidualKeeper::Find(int64_t first, const Pass& pack, at::Tensor* x) const {
  for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
    if (it->first > first) continue;
    auto p = it->second.find(pack.first_prompt);
    if (p == it->second.end() || p->second.num_prompts != pack.num_prompts) continue;
    *x = p->second.x;
    return it->first;
  }
  return 0;
}

}  // namespace sinkscope::job
