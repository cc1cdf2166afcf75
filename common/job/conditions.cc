// Perplexity conditions (see conditions.h).
#include "common/job/conditions.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/util/overloaded.h"

namespace sinkscope::job {
namespace {

std::string Fmt(double x) { return absl::StrFormat("%g", x); }

}  // namespace

absl::StatusOr<Condition> ResolveCondition(const Intervention& iv, const std::string& label,
                                           const analysis::ModelDims& dims, const analysis::ResidualStats* resid,
                                           const analysis::QkIdentifier* ident, PerplexityResult* r,
                                           std::map<std::string, double>* metrics) {
  const std::string key = "perplexity." + label;
  Condition c;
  c.name = label;
  absl::Status st = std::visit(
      Overloaded{
          [&](const BosMlpAblation& a) -> absl::Status {
            const int32_t layer = a.layer ? *a.layer : resid->SpikeLayer(a.spike_rule);
            if (layer < 0) return absl::InternalError("spike layer unavailable (no baseline prompt)");
            r->resolved_layer = layer;
            r->detail = a.layer ? absl::StrCat("layer ", layer, " (explicit)")
                                : absl::StrCat("layer ", layer, " (", Name(a.spike_rule), ")");
            (*metrics)[key + ".layer"] = layer;
            c.install = [layer](model::HookSet* h) { analysis::AddBosMlpAblation(layer, h); };
            return absl::OkStatus();
          },
          [&](const QkMassiveDisruption& q) -> absl::Status {
            c.masks = ident->Masks(q.lambda, q.scope);
            r->disrupted_dims = static_cast<int32_t>(c.masks.count(q.q, q.k));
            r->detail = absl::StrCat(r->disrupted_dims, " dims in ", c.masks.num_layers(q.q, q.k), " layers (",
                                     q.q && q.k ? "q+k" : (q.q ? "q" : "k"), ", identified on ", ident->num_prompts(),
                                     " prompts, lambda=", Fmt(q.lambda), ", ",
                                     q.scope == ThresholdScope::kLayer ? "layer" : "head", " scope, ",
                                     q.replacement == Replacement::kZero ? "zeroed" : "mean-replaced", ")");
            (*metrics)[key + ".dims"] = r->disrupted_dims;
            c.install = [masks = c.masks, q](model::HookSet* h) {
              analysis::AddQkDisruption(masks, q.replacement, q.q, q.k, h);
            };
            return absl::OkStatus();
          },
          [&](const TopPerHeadMeanReplacement& t) -> absl::Status {
            r->detail = absl::StrCat("top-", t.k, t.smallest ? " smallest" : "", " dims per head, ",
                                     t.post_rotary ? "post-rotary" : "pre-rotary", ", q and k, all layers",
                                     t.lambda ? absl::StrCat(", only > ", Fmt(*t.lambda), " x head mean") : "");
            c.install = [t, dims](model::HookSet* h) { analysis::AddTopPerHead(t, dims, h); };
            return absl::OkStatus();
          },
          [&](const HeadAblation& ha) -> absl::Status {
            r->detail = absl::StrCat(ha.heads.size(), " heads ",
                                     ha.replacement == Replacement::kZero ? "zeroed" : "mean-replaced");
            c.install = [ha, dims](model::HookSet* h) { analysis::AddHeadAblation(ha, dims, h); };
            return absl::OkStatus();
          },
          [&](const std::vector<ActivationEdit>& e) -> absl::Status {
            r->detail = absl::StrCat(e.size(), " edits");
            c.install = [e, dims](model::HookSet* h) { analysis::AddActivationEdits(e, dims, h); };
            return absl::OkStatus();
          },
      },
      iv.kind);
  if (!st.ok()) return st;
  return c;
}

Condition ControlCondition(const Condition& main, const QkMassiveDisruption& q, const std::string& label,
                           uint64_t seed, const analysis::ModelDims& dims) {
  Condition c;
  c.name = absl::StrCat(label, "/control_seed_", seed);
  c.masks = main.masks;
  c.install = [rm = analysis::RandomControlMasks(main.masks, dims, seed), q](model::HookSet* h) {
    analysis::AddQkDisruption(rm, q.replacement, q.q, q.k, h);
  };
  return c;
}

void FinishConditionResult(const std::string& key, double base_ppl, const analysis::StatAcc& controls,
                           const analysis::StatAcc& controls_pct, PerplexityResult* r,
                           std::map<std::string, double>* metrics) {
  std::map<std::string, double>& m = *metrics;
  const bool with_controls = !r->control_perplexities.empty();
  if (with_controls) {
    r->control = controls.Get();
    m[key + ".control_mean"] = controls.mean();
    m[key + ".control_std"] = controls.std();
    m[key + ".control_increase_pct"] = controls_pct.mean();
  }
  r->ratio_to_baseline = base_ppl > 0 ? r->perplexity / base_ppl : 0.0;
  m[key] = r->perplexity;
  m[key + ".ratio"] = r->ratio_to_baseline;
  const double pct = base_ppl > 0 ? (r->perplexity - base_ppl) / base_ppl * 100.0 : 0.0;
  m[key + ".increase_pct"] = pct;
  if (with_controls) m[key + ".massive_minus_random_pct"] = pct - m[key + ".control_increase_pct"];
}

}  // namespace sinkscope::job
