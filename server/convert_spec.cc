// v1::JobSpec <-> job::JobSpec (see convert.h). Structure only: the engine owns every range rule and default.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/util/overloaded.h"
#include "common/util/status_macros.h"
#include "server/convert.h"
#include "server/convert_enums.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;
using internal::EnumFromProto;
using internal::EnumToProto;
using internal::Zero;

namespace {

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// proto3 cannot tell 0 from unset, and 0 means "default" for these fields: it leaves the engine's value.
template <typename T, typename V>
void IfNonZero(V v, T* field) {
  if (v != V()) *field = static_cast<T>(v);
}

absl::StatusOr<job::Inputs> InputsFrom(const v1::Inputs& p, const std::string& where) {
  job::Inputs in;
  // An empty list or name would reach the engine as "no source": name what the client actually sent instead.
  switch (p.source_case()) {
    case v1::Inputs::kTexts:
      if (p.texts().texts_size() == 0) return Bad(where + ".texts", "empty list");
      in.texts.assign(p.texts().texts().begin(), p.texts().texts().end());
      break;
    case v1::Inputs::kTokenIds:
      if (p.token_ids().prompts_size() == 0) return Bad(where + ".token_ids", "empty list");
      for (const auto& prompt : p.token_ids().prompts())
        in.token_ids.emplace_back(prompt.ids().begin(), prompt.ids().end());
      break;
    case v1::Inputs::kDataset:
      if (p.dataset().empty()) return Bad(where + ".dataset", "empty name");
      in.dataset = p.dataset();
      break;
    default:
      return Bad(where, "no source set (texts, token_ids or dataset)");
  }
  IfNonZero(p.max_prompts(), &in.max_prompts);
  return in;
}

absl::StatusOr<job::Intervention> InterventionFrom(const v1::Intervention& p, const std::string& where) {
  job::Intervention iv;
  iv.label = p.label();
  switch (p.kind_case()) {
    case v1::Intervention::kBosMlp: {
      job::BosMlpAblation a;
      if (p.bos_mlp().layer_choice_case() == v1::BosMlpAblation::kLayer) {
        a.layer = p.bos_mlp().layer();
      } else {
        RETURN_IF_ERROR(
            EnumFromProto(internal::kSpikeRules, p.bos_mlp().spike(), where + ".bos_mlp.spike", &a.spike_rule));
      }
      iv.kind = a;
      break;
    }
    case v1::Intervention::kQkMassive: {
      const auto& q = p.qk_massive();
      job::QkMassiveDisruption d;
      if (q.has_lambda()) d.lambda = q.lambda();
      RETURN_IF_ERROR(EnumFromProto(internal::kScopes, q.scope(), where + ".qk_massive.scope", &d.scope));
      RETURN_IF_ERROR(
          EnumFromProto(internal::kReplacements, q.replacement(), where + ".qk_massive.replacement", &d.replacement));
      if (q.has_identify_on()) {
        ASSIGN_OR_RETURN(d.identify_on, InputsFrom(q.identify_on(), where + ".qk_massive.identify_on"));
      }
      d.control_seeds.assign(q.control_seeds().begin(), q.control_seeds().end());
      // proto3 bools cannot be unset: neither selected means the default, both.
      d.q = q.q() || !q.k();
      d.k = q.k() || !q.q();
      iv.kind = std::move(d);
      break;
    }
    case v1::Intervention::kTopPerHead: {
      const auto& t = p.top_per_head();
      job::TopPerHeadMeanReplacement r;
      IfNonZero(t.k(), &r.k);
      r.post_rotary = t.post_rotary();
      if (t.has_lambda()) r.lambda = t.lambda();
      r.smallest = t.smallest();
      iv.kind = r;
      break;
    }
    case v1::Intervention::kHeads: {
      job::HeadAblation h;
      for (const auto& hr : p.heads().heads()) h.heads.push_back({hr.layer(), hr.head()});
      RETURN_IF_ERROR(EnumFromProto(internal::kReplacements, p.heads().replacement(), where + ".heads.replacement",
                                    &h.replacement));
      iv.kind = std::move(h);
      break;
    }
    case v1::Intervention::kEdits: {
      std::vector<job::ActivationEdit> edits;
      for (int i = 0; i < p.edits().edits_size(); ++i) {
        const auto& e = p.edits().edits(i);
        job::ActivationEdit ae;
        ae.hook = e.hook();
        // An edit has no default operation: UNSPECIFIED is an error, not ZERO.
        RETURN_IF_ERROR(EnumFromProto(internal::kEditOps, e.op(), absl::StrCat(where, ".edits[", i, "].op"), &ae.op,
                                      Zero::kInvalid));
        ae.value = e.value();
        ae.positions.assign(e.positions().begin(), e.positions().end());
        ae.heads.assign(e.heads().begin(), e.heads().end());
        ae.dims.assign(e.dims().begin(), e.dims().end());
        edits.push_back(std::move(ae));
      }
      iv.kind = std::move(edits);
      break;
    }
    default:
      return Bad(where, "no intervention kind set");
  }
  return iv;
}

absl::StatusOr<job::AnalysisSpec> AnalysisFrom(const v1::Analysis& a, const std::string& where) {
  switch (a.kind_case()) {
    case v1::Analysis::kSinkRate: {
      const auto& p = a.sink_rate();
      job::SinkRateSpec s;
      if (p.has_tau()) s.tau = p.tau();
      RETURN_IF_ERROR(
          EnumFromProto(internal::kQueryRows, p.query_rows(), where + ".sink_rate.query_rows", &s.query_rows));
      RETURN_IF_ERROR(EnumFromProto(internal::kAttentionSources, p.source(), where + ".sink_rate.source", &s.source));
      return s;
    }
    case v1::Analysis::kMassiveValues: {
      const auto& p = a.massive_values();
      job::MassiveValuesSpec s;
      if (p.has_lambda()) s.lambda = p.lambda();
      if (p.tensors_size() > 0) s.tensors.resize(p.tensors_size());
      for (int i = 0; i < p.tensors_size(); ++i)
        RETURN_IF_ERROR(EnumFromProto(internal::kQkvTensors, p.tensors(i),
                                      absl::StrCat(where, ".massive_values.tensors[", i, "]"), &s.tensors[i],
                                      Zero::kInvalid));
      s.post_rotary = p.post_rotary();
      RETURN_IF_ERROR(EnumFromProto(internal::kScopes, p.scope(), where + ".massive_values.scope", &s.scope));
      IfNonZero(p.top_k(), &s.top_k);
      return s;
    }
    case v1::Analysis::kResidualStats:
      return job::ResidualStatsSpec{a.residual_stats().final_norm_last_layer()};
    case v1::Analysis::kMatrixEntropy:
      return job::MatrixEntropySpec{a.matrix_entropy().final_norm_last_layer(), a.matrix_entropy().normalized()};
    case v1::Analysis::kPerplexity: {
      job::PerplexitySpec s;
      s.weight_by_t = a.perplexity().weight_by_t();
      for (int i = 0; i < a.perplexity().interventions_size(); ++i) {
        ASSIGN_OR_RETURN(
            job::Intervention iv,
            InterventionFrom(a.perplexity().interventions(i), absl::StrCat(where, ".perplexity.interventions[", i, "]")));
        s.interventions.push_back(std::move(iv));
      }
      return s;
    }
    case v1::Analysis::kActivationStats: {
      job::ActivationStatsSpec s;
      s.hooks.assign(a.activation_stats().hooks().begin(), a.activation_stats().hooks().end());
      IfNonZero(a.activation_stats().top_k(), &s.top_k);
      return s;
    }
    default:
      return Bad(where, "no analysis kind set");
  }
}

void InputsTo(const job::Inputs& in, v1::Inputs* p) {
  if (!in.texts.empty()) {
    for (const auto& t : in.texts) p->mutable_texts()->add_texts(t);
  } else if (!in.token_ids.empty()) {
    for (const auto& ids : in.token_ids)
      p->mutable_token_ids()->add_prompts()->mutable_ids()->Add(ids.begin(), ids.end());
  } else {
    p->set_dataset(in.dataset);
  }
  p->set_max_prompts(in.max_prompts);
}

void InterventionTo(const job::Intervention& iv, v1::Intervention* p) {
  p->set_label(iv.label);
  std::visit(
      Overloaded{
          [&](const job::BosMlpAblation& b) {
            if (b.layer) {
              p->mutable_bos_mlp()->set_layer(*b.layer);
            } else {
              p->mutable_bos_mlp()->set_spike(EnumToProto(internal::kSpikeRules, b.spike_rule));
            }
          },
          [&](const job::QkMassiveDisruption& d) {
            auto* q = p->mutable_qk_massive();
            q->set_lambda(d.lambda);
            q->set_scope(EnumToProto(internal::kScopes, d.scope));
            q->set_replacement(EnumToProto(internal::kReplacements, d.replacement));
            if (d.identify_on) InputsTo(*d.identify_on, q->mutable_identify_on());
            q->mutable_control_seeds()->Add(d.control_seeds.begin(), d.control_seeds.end());
            q->set_q(d.q);
            q->set_k(d.k);
          },
          [&](const job::TopPerHeadMeanReplacement& r) {
            auto* t = p->mutable_top_per_head();
            t->set_k(r.k);
            t->set_post_rotary(r.post_rotary);
            if (r.lambda) t->set_lambda(*r.lambda);
            t->set_smallest(r.smallest);
          },
          [&](const job::HeadAblation& h) {
            auto* ph = p->mutable_heads();
            for (const auto& hr : h.heads) {
              auto* ref = ph->add_heads();
              ref->set_layer(hr.layer);
              ref->set_head(hr.head);
            }
            ph->set_replacement(EnumToProto(internal::kReplacements, h.replacement));
          },
          [&](const std::vector<job::ActivationEdit>& edits) {
            auto* pe = p->mutable_edits();
            for (const auto& e : edits) {
              auto* x = pe->add_edits();
              x->set_hook(e.hook);
              x->set_op(EnumToProto(internal::kEditOps, e.op));
              x->set_value(e.value);
              x->mutable_positions()->Add(e.positions.begin(), e.positions.end());
              x->mutable_heads()->Add(e.heads.begin(), e.heads.end());
              x->mutable_dims()->Add(e.dims.begin(), e.dims.end());
            }
          },
      },
      iv.kind);
}

void AnalysisTo(const job::AnalysisSpec& a, v1::Analysis* p) {
  std::visit(Overloaded{
                 [&](const job::SinkRateSpec& s) {
                   auto* x = p->mutable_sink_rate();
                   x->set_tau(s.tau);
                   x->set_query_rows(EnumToProto(internal::kQueryRows, s.query_rows));
                   x->set_source(EnumToProto(internal::kAttentionSources, s.source));
                 },
                 [&](const job::MassiveValuesSpec& s) {
                   auto* x = p->mutable_massive_values();
                   x->set_lambda(s.lambda);
                   for (job::QkvTensor t : s.tensors) x->add_tensors(EnumToProto(internal::kQkvTensors, t));
                   x->set_post_rotary(s.post_rotary);
                   x->set_scope(EnumToProto(internal::kScopes, s.scope));
                   x->set_top_k(s.top_k);
                 },
                 [&](const job::ResidualStatsSpec& s) {
                   p->mutable_residual_stats()->set_final_norm_last_layer(s.final_norm_last_layer);
                 },
                 [&](const job::MatrixEntropySpec& s) {
                   p->mutable_matrix_entropy()->set_final_norm_last_layer(s.final_norm_last_layer);
                   p->mutable_matrix_entropy()->set_normalized(s.normalized);
                 },
                 [&](const job::PerplexitySpec& s) {
                   auto* x = p->mutable_perplexity();
                   for (const auto& iv : s.interventions) InterventionTo(iv, x->add_interventions());
                   x->set_weight_by_t(s.weight_by_t);
                 },
                 [&](const job::ActivationStatsSpec& s) {
                   auto* x = p->mutable_activation_stats();
                   for (const auto& h : s.hooks) x->add_hooks(h);
                   x->set_top_k(s.top_k);
                 },
             },
             a);
}

}  // namespace

absl::StatusOr<job::JobSpec> FromProto(const v1::JobSpec& p) {
  job::JobSpec s;
  s.models.assign(p.models().begin(), p.models().end());
  if (!p.has_inputs()) return Bad("inputs", "required");
  ASSIGN_OR_RETURN(s.inputs, InputsFrom(p.inputs(), "inputs"));
  for (int i = 0; i < p.analyses_size(); ++i) {
    // Assigned in place: a local AnalysisSpec moved into the vector trips GCC 14's -Wmaybe-uninitialized (a false
    // positive inside std::variant's move).
    ASSIGN_OR_RETURN(s.analyses.emplace_back(), AnalysisFrom(p.analyses(i), absl::StrCat("analyses[", i, "]")));
  }
  IfNonZero(p.limits().max_tokens(), &s.max_tokens);
  IfNonZero(p.seed(), &s.seed);
  s.per_prompt = p.per_prompt();
  s.emit_token_ids = p.emit_token_ids();
  s.truncate_to_context = p.truncate_to_context();
  s.no_cache = p.no_cache();
  return s;
}

absl::StatusOr<ServerFields> ServerFieldsFromProto(const v1::JobSpec& p) {
  if (p.priority() < -10 || p.priority() > 10) return Bad("priority", absl::StrCat(p.priority(), " not in [-10,10]"));
  if (!(p.deadline_seconds() >= 0) || !std::isfinite(p.deadline_seconds()))
    return Bad("deadline_seconds", absl::StrCat(p.deadline_seconds(), " must be >= 0"));
  // A deadline far in the future (1e10 s) overflows the clock's arithmetic and would count as already past: clamp it
  // to 30 days, longer than any job should run, and store the clamped value.
  constexpr double kMaxDeadline = 30.0 * 24 * 3600;
  return ServerFields{p.priority(), std::min(p.deadline_seconds(), kMaxDeadline), p.label()};
}

namespace {

// The scheduler's fields and the label, which the engine never sees.
void ServerFieldsTo(const ServerFields& f, v1::JobSpec* p) {
  p->set_priority(f.priority);
  p->set_deadline_seconds(f.deadline_seconds);
  p->set_label(f.label);
}

}  // namespace

v1::JobSpec ToProto(const job::JobSpec& s, const ServerFields& server) {
  v1::JobSpec p;
  for (const auto& m : s.models) p.add_models(m);
  InputsTo(s.inputs, p.mutable_inputs());
  for (const auto& a : s.analyses) AnalysisTo(a, p.add_analyses());
  p.mutable_limits()->set_max_tokens(s.max_tokens);
  p.set_seed(s.seed);
  p.set_per_prompt(s.per_prompt);
  p.set_emit_token_ids(s.emit_token_ids);
  p.set_truncate_to_context(s.truncate_to_context);
  p.set_no_cache(s.no_cache);
  ServerFieldsTo(server, &p);
  return p;
}

}  // namespace sinkscope::server
