// Prefix reuse (see prefix_reuse.h).
#include "common/job/prefix_reuse.h"

#include <algorithm>
#include <limits>

#include "common/analysis/interventions.h"
#include "common/job/packing.h"

namespace sinkscope::job {

ResidualKeeper::ResidualKeeper(const Plan& plan, const ModelPlan& mp, const model::LlamaConfig& cfg,
                               const analysis::ModelDims& dims, bool one_wave)
    : cfg_(cfg), budget_(mp.residual_budget) {
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
    } else if (const auto* q = std::get_if<QkMassiveDisruption>(&iv.kind)) {
      // Identified on the job's inputs: its first layer (and its controls', which select as many dims per layer) is
      // known once the one wave has left it. Identified on other prompts: only after the baseline, so no reuse.
      if (one_wave && !q->identify_on) qk_.push_back(QkTrack{q->lambda, q->scope, q->q, q->k});
      continue;
    } else {
      continue;  // top-k replacements act in every layer
    }
    const int64_t first = hooks.FirstLayer(dims.n_layers);
    if (first > 0 && first < dims.n_layers) known_.insert(static_cast<int32_t>(first));
  }
}

void ResidualKeeper::BeforeLayer(int32_t l, const std::vector<const Pass*>& packs,
                                 const std::vector<const at::Tensor*>& entering) {
  const bool searching = std::any_of(qk_.begin(), qk_.end(), [](const QkTrack& t) { return t.first < 0; });
  if (l == 0 || (!known_.count(l) && spike_rules_.empty() && !searching)) return;
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

std::set<int32_t> ResidualKeeper::Wanted(const analysis::ResidualStats* resid, int32_t up_to) const {
  std::set<int32_t> keep = known_;
  if (resid != nullptr)
    for (SpikeRule r : spike_rules_) keep.insert(resid->SpikeLayer(r, up_to));
  for (const QkTrack& t : qk_)
    if (t.first >= 0) keep.insert(t.first);
  return keep;
}

void ResidualKeeper::DropAllBut(const std::set<int32_t>& keep, int32_t below) {
  std::vector<int32_t> drop;
  for (const auto& [layer, packs] : kept_)
    if (layer < below && !keep.count(layer)) drop.push_back(layer);
  for (int32_t layer : drop) Drop(layer);
}

void ResidualKeeper::AfterLayer(int32_t l, const analysis::ResidualStats* resid, const analysis::QkIdentifier* ident) {
  if (spike_rules_.empty() && qk_.empty()) return;
  if (ident != nullptr)
    for (QkTrack& t : qk_)
      if (t.first < 0 && ident->SelectsInLayer(l, t.lambda, t.scope, t.q, t.k)) t.first = l;
  // Layers up to l are final here, except the last one, whose statistics may still wait for the final norm: what no
  // intervention wants among them goes now, so that tracking holds at most the spike so far and the layer running.
  const int32_t final_below = l + 1 < cfg_.num_hidden_layers ? l + 1 : l;
  DropAllBut(Wanted(resid, l), final_below);
}

void ResidualKeeper::EndBaseline(const analysis::ResidualStats* resid) {
  DropAllBut(Wanted(resid, -1), std::numeric_limits<int32_t>::max());
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
