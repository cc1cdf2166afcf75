#include "server/convert.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

namespace {

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// λ-style parameters: strictly positive and finite.
absl::StatusOr<double> PositiveFinite(double v, const std::string& field) {
  if (!(v > 0) || !std::isfinite(v)) return Bad(field, absl::StrCat(v, " must be > 0"));
  return v;
}

// top_k fields: 0 means the default of 8; at most 64.
absl::StatusOr<int32_t> TopK(int32_t k, const std::string& field) {
  if (k < 0 || k > 64) return Bad(field, absl::StrCat(k, " not in [0,64]"));
  return k == 0 ? 8 : k;
}

absl::StatusOr<job::Inputs> InputsFrom(const v1::Inputs& p, const std::string& where) {
  job::Inputs in;
  switch (p.source_case()) {
    case v1::Inputs::kTexts:
      if (p.texts().texts_size() == 0) return Bad(where + ".texts", "empty list");
      for (int i = 0; i < p.texts().texts_size(); ++i) {
        if (p.texts().texts(i).empty()) return Bad(absl::StrCat(where, ".texts[", i, "]"), "empty text");
        in.texts.push_back(p.texts().texts(i));
      }
      break;
    case v1::Inputs::kTokenIds:
      if (p.token_ids().prompts_size() == 0) return Bad(where + ".token_ids", "empty list");
      for (int i = 0; i < p.token_ids().prompts_size(); ++i) {
        const auto& ids = p.token_ids().prompts(i).ids();
        if (ids.empty()) return Bad(absl::StrCat(where, ".token_ids[", i, "]"), "empty prompt");
        in.token_ids.emplace_back(ids.begin(), ids.end());
      }
      break;
    case v1::Inputs::kDataset:
      if (p.dataset().empty()) return Bad(where + ".dataset", "empty name");
      in.dataset = p.dataset();
      break;
    default:
      return Bad(where, "no source set (texts, token_ids or dataset)");
  }
  if (p.max_prompts() < 0) return Bad(where + ".max_prompts", absl::StrCat(p.max_prompts(), " < 0"));
  in.max_prompts = p.max_prompts();
  return in;
}

absl::StatusOr<job::QkvTensor> TensorFrom(v1::QkvTensor t, const std::string& where) {
  switch (t) {
    case v1::QKV_TENSOR_Q: return job::QkvTensor::kQ;
    case v1::QKV_TENSOR_K: return job::QkvTensor::kK;
    case v1::QKV_TENSOR_V: return job::QkvTensor::kV;
    default: return Bad(where, absl::StrCat("invalid tensor ", static_cast<int>(t)));
  }
}

absl::StatusOr<job::ThresholdScope> ScopeFrom(v1::ThresholdScope s, const std::string& where) {
  switch (s) {
    case v1::THRESHOLD_SCOPE_UNSPECIFIED:
    case v1::THRESHOLD_SCOPE_LAYER: return job::ThresholdScope::kLayer;
    case v1::THRESHOLD_SCOPE_HEAD: return job::ThresholdScope::kHead;
    default: return Bad(where, absl::StrCat("invalid scope ", static_cast<int>(s)));
  }
}

absl::StatusOr<job::Replacement> ReplacementFrom(v1::Replacement r, const std::string& where) {
  switch (r) {
    case v1::REPLACEMENT_UNSPECIFIED:
    case v1::REPLACEMENT_ZERO: return job::Replacement::kZero;
    case v1::REPLACEMENT_MEAN: return job::Replacement::kMean;
    default: return Bad(where, absl::StrCat("invalid replacement ", static_cast<int>(r)));
  }
}

absl::StatusOr<job::SpikeRule> SpikeFrom(v1::SpikeRule r, const std::string& where) {
  switch (r) {
    case v1::SPIKE_RULE_UNSPECIFIED:
    case v1::SPIKE_RULE_ARGMAX_RATIO: return job::SpikeRule::kArgmaxRatio;
    case v1::SPIKE_RULE_ARGMAX_JUMP: return job::SpikeRule::kArgmaxJump;
    default: return Bad(where, absl::StrCat("invalid spike rule ", static_cast<int>(r)));
  }
}

absl::StatusOr<job::EditOp> OpFrom(v1::EditOp o, const std::string& where) {
  switch (o) {
    case v1::EDIT_OP_ZERO: return job::EditOp::kZero;
    case v1::EDIT_OP_SCALE: return job::EditOp::kScale;
    case v1::EDIT_OP_ADD: return job::EditOp::kAdd;
    case v1::EDIT_OP_MEAN: return job::EditOp::kMean;
    case v1::EDIT_OP_SET: return job::EditOp::kSet;
    default: return Bad(where, "op must be ZERO, SCALE, ADD, MEAN or SET");
  }
}

#define ASSIGN_OR_RETURN_C(lhs, expr) \
  {                                    \
    auto _r = (expr);                  \
    if (!_r.ok()) return _r.status();  \
    lhs = *std::move(_r);              \
  }

absl::StatusOr<job::Intervention> InterventionFrom(const v1::Intervention& p, const std::string& where) {
  job::Intervention iv;
  iv.label = p.label();
  switch (p.kind_case()) {
    case v1::Intervention::kBosMlp: {
      job::BosMlpAblation a;
      if (p.bos_mlp().layer_choice_case() == v1::BosMlpAblation::kLayer) {
        if (p.bos_mlp().layer() < 0) return Bad(where + ".bos_mlp.layer", absl::StrCat(p.bos_mlp().layer(), " < 0"));
        a.layer = p.bos_mlp().layer();
      } else {
        ASSIGN_OR_RETURN_C(a.spike_rule, SpikeFrom(p.bos_mlp().spike(), where + ".bos_mlp.spike"));
      }
      iv.kind = a;
      break;
    }
    case v1::Intervention::kQkMassive: {
      const auto& q = p.qk_massive();
      job::QkMassiveDisruption d;
      if (q.has_lambda()) ASSIGN_OR_RETURN_C(d.lambda, PositiveFinite(q.lambda(), where + ".qk_massive.lambda"));
      ASSIGN_OR_RETURN_C(d.scope, ScopeFrom(q.scope(), where + ".qk_massive.scope"));
      ASSIGN_OR_RETURN_C(d.replacement, ReplacementFrom(q.replacement(), where + ".qk_massive.replacement"));
      if (q.has_identify_on()) {
        ASSIGN_OR_RETURN_C(d.identify_on, InputsFrom(q.identify_on(), where + ".qk_massive.identify_on"));
      }
      if (q.control_seeds_size() > 100) return Bad(where + ".qk_massive.control_seeds", "more than 100 seeds");
      d.control_seeds.assign(q.control_seeds().begin(), q.control_seeds().end());
      d.q = q.q() || !q.k();
      d.k = q.k() || !q.q();
      iv.kind = d;
      break;
    }
    case v1::Intervention::kTopPerHead: {
      const auto& t = p.top_per_head();
      job::TopPerHeadMeanReplacement r;
      if (t.k() < 0) return Bad(where + ".top_per_head.k", absl::StrCat(t.k(), " < 0"));
      r.k = t.k() == 0 ? 1 : t.k();
      r.post_rotary = t.post_rotary();
      if (t.has_lambda()) ASSIGN_OR_RETURN_C(r.lambda, PositiveFinite(t.lambda(), where + ".top_per_head.lambda"));
      r.smallest = t.smallest();
      iv.kind = r;
      break;
    }
    case v1::Intervention::kHeads: {
      job::HeadAblation h;
      if (p.heads().heads_size() == 0) return Bad(where + ".heads.heads", "empty list");
      for (const auto& hr : p.heads().heads()) h.heads.push_back({hr.layer(), hr.head()});
      ASSIGN_OR_RETURN_C(h.replacement, ReplacementFrom(p.heads().replacement(), where + ".heads.replacement"));
      iv.kind = h;
      break;
    }
    case v1::Intervention::kEdits: {
      std::vector<job::ActivationEdit> edits;
      if (p.edits().edits_size() == 0) return Bad(where + ".edits", "empty list");
      for (int i = 0; i < p.edits().edits_size(); ++i) {
        const auto& e = p.edits().edits(i);
        const std::string w = absl::StrCat(where, ".edits[", i, "]");
        job::ActivationEdit ae;
        if (e.hook().empty()) return Bad(w + ".hook", "empty");
        ae.hook = e.hook();
        ASSIGN_OR_RETURN_C(ae.op, OpFrom(e.op(), w + ".op"));
        if (!std::isfinite(e.value())) return Bad(w + ".value", "not finite");
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
      job::SinkRateSpec s;
      const auto& p = a.sink_rate();
      if (p.has_tau()) {
        if (!(p.tau() >= 0 && p.tau() <= 1)) return Bad(where + ".sink_rate.tau", absl::StrCat(p.tau(), " not in [0,1]"));
        s.tau = p.tau();
      }
      switch (p.query_rows()) {
        case v1::QUERY_ROWS_UNSPECIFIED:
        case v1::QUERY_ROWS_ALL: s.query_rows = job::QueryRows::kAll; break;
        case v1::QUERY_ROWS_EXCLUDE_BOS: s.query_rows = job::QueryRows::kExcludeBos; break;
        default: return Bad(where + ".sink_rate.query_rows", "invalid value");
      }
      switch (p.source()) {
        case v1::ATTENTION_SOURCE_UNSPECIFIED:
        case v1::ATTENTION_SOURCE_MODEL: s.source = job::AttentionSource::kModel; break;
        case v1::ATTENTION_SOURCE_PRE_ROTARY: s.source = job::AttentionSource::kPreRotary; break;
        default: return Bad(where + ".sink_rate.source", "invalid value");
      }
      return s;
    }
    case v1::Analysis::kMassiveValues: {
      job::MassiveValuesSpec s;
      const auto& p = a.massive_values();
      if (p.has_lambda()) ASSIGN_OR_RETURN_C(s.lambda, PositiveFinite(p.lambda(), where + ".massive_values.lambda"));
      if (p.tensors_size() > 0) {
        s.tensors.clear();
        for (int i = 0; i < p.tensors_size(); ++i) {
          job::QkvTensor t;
          ASSIGN_OR_RETURN_C(t, TensorFrom(p.tensors(i), absl::StrCat(where, ".massive_values.tensors[", i, "]")));
          s.tensors.push_back(t);
        }
      }
      s.post_rotary = p.post_rotary();
      ASSIGN_OR_RETURN_C(s.scope, ScopeFrom(p.scope(), where + ".massive_values.scope"));
      ASSIGN_OR_RETURN_C(s.top_k, TopK(p.top_k(), where + ".massive_values.top_k"));
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
        job::Intervention iv;
        ASSIGN_OR_RETURN_C(iv, InterventionFrom(a.perplexity().interventions(i),
                                                absl::StrCat(where, ".perplexity.interventions[", i, "]")));
        s.interventions.push_back(std::move(iv));
      }
      return s;
    }
    case v1::Analysis::kActivationStats: {
      job::ActivationStatsSpec s;
      const auto& p = a.activation_stats();
      if (p.hooks_size() == 0) return Bad(where + ".activation_stats.hooks", "empty list");
      s.hooks.assign(p.hooks().begin(), p.hooks().end());
      ASSIGN_OR_RETURN_C(s.top_k, TopK(p.top_k(), where + ".activation_stats.top_k"));
      return s;
    }
    default:
      return Bad(where, "no analysis kind set");
  }
}

}  // namespace

absl::StatusOr<job::JobSpec> FromProto(const v1::JobSpec& p) {
  job::JobSpec s;
  if (p.models_size() == 0) return Bad("models", "at least one model is required");
  for (int i = 0; i < p.models_size(); ++i) {
    if (p.models(i).empty()) return Bad(absl::StrCat("models[", i, "]"), "empty name");
    for (int j = 0; j < i; ++j)
      if (p.models(j) == p.models(i)) return Bad(absl::StrCat("models[", i, "]"), "duplicate '" + p.models(i) + "'");
    s.models.push_back(p.models(i));
  }
  if (!p.has_inputs()) return Bad("inputs", "required");
  ASSIGN_OR_RETURN_C(s.inputs, InputsFrom(p.inputs(), "inputs"));
  if (p.analyses_size() == 0) return Bad("analyses", "at least one analysis is required");
  for (int i = 0; i < p.analyses_size(); ++i) {
    job::AnalysisSpec a;
    ASSIGN_OR_RETURN_C(a, AnalysisFrom(p.analyses(i), absl::StrCat("analyses[", i, "]")));
    s.analyses.push_back(std::move(a));
  }
  if (p.limits().max_tokens() < 0) return Bad("limits.max_tokens", absl::StrCat(p.limits().max_tokens(), " < 0"));
  if (p.limits().max_tokens() == 1) return Bad("limits.max_tokens", "must be >= 2 (BOS plus one token)");
  s.max_tokens = p.limits().max_tokens();
  if (p.priority() < -10 || p.priority() > 10) return Bad("priority", absl::StrCat(p.priority(), " not in [-10,10]"));
  if (!(p.deadline_seconds() >= 0) || !std::isfinite(p.deadline_seconds()))
    return Bad("deadline_seconds", absl::StrCat(p.deadline_seconds(), " must be >= 0"));
  s.seed = p.seed() == 0 ? 42 : p.seed();
  return s;
}

v1::JobSpec WithDefaults(const v1::JobSpec& p) {
  v1::JobSpec out = p;
  if (out.seed() == 0) out.set_seed(42);
  for (auto& a : *out.mutable_analyses()) {
    if (a.has_sink_rate()) {
      auto* s = a.mutable_sink_rate();
      if (!s->has_tau()) s->set_tau(0.3);
      if (s->query_rows() == v1::QUERY_ROWS_UNSPECIFIED) s->set_query_rows(v1::QUERY_ROWS_ALL);
      if (s->source() == v1::ATTENTION_SOURCE_UNSPECIFIED) s->set_source(v1::ATTENTION_SOURCE_MODEL);
    } else if (a.has_massive_values()) {
      auto* m = a.mutable_massive_values();
      if (!m->has_lambda()) m->set_lambda(5.0);
      if (m->tensors_size() == 0)
        for (auto t : {v1::QKV_TENSOR_Q, v1::QKV_TENSOR_K, v1::QKV_TENSOR_V}) m->add_tensors(t);
      if (m->scope() == v1::THRESHOLD_SCOPE_UNSPECIFIED) m->set_scope(v1::THRESHOLD_SCOPE_LAYER);
      if (m->top_k() == 0) m->set_top_k(8);
    } else if (a.has_activation_stats()) {
      if (a.activation_stats().top_k() == 0) a.mutable_activation_stats()->set_top_k(8);
    }
  }
  return out;
}

void ToProto(const job::Stat& s, v1::Stat* p) {
  p->set_mean(s.mean);
  p->set_std(s.std);
  p->set_n(s.n);
}

void ToProto(const job::LayerResult& r, v1::LayerResult* p) {
  p->set_model(r.model);
  p->set_layer(r.layer);
  if (r.sink_rate) {
    auto* s = p->mutable_sink_rate();
    ToProto(r.sink_rate->sink_rate, s->mutable_sink_rate());
    for (double v : r.sink_rate->head_scores) s->add_head_scores(v);
    s->set_tau(r.sink_rate->tau);
  }
  if (r.massive_values) {
    auto* m = p->mutable_massive_values();
    m->set_lambda(r.massive_values->lambda);
    m->set_post_rotary(r.massive_values->post_rotary);
    for (const auto& t : r.massive_values->tensors) {
      auto* pt = m->add_tensors();
      pt->set_tensor(t.tensor == job::QkvTensor::kQ   ? v1::QKV_TENSOR_Q
                     : t.tensor == job::QkvTensor::kK ? v1::QKV_TENSOR_K
                                                      : v1::QKV_TENSOR_V);
      ToProto(t.count, pt->mutable_count());
      pt->set_threshold(t.threshold);
      pt->set_gini(t.gini);
      for (const auto& d : t.top) {
        auto* e = pt->add_top();
        e->set_head(d.head);
        e->set_dim(d.dim);
        e->set_value(d.value);
      }
    }
  }
  if (r.residual_stats) {
    auto* s = p->mutable_residual_stats();
    ToProto(r.residual_stats->bos_norm, s->mutable_bos_norm());
    ToProto(r.residual_stats->mean_other_norm, s->mutable_mean_other_norm());
    ToProto(r.residual_stats->ratio, s->mutable_ratio());
    s->set_post_final_norm(r.residual_stats->post_final_norm);
  }
  if (r.matrix_entropy) {
    auto* s = p->mutable_matrix_entropy();
    ToProto(r.matrix_entropy->entropy, s->mutable_entropy());
    ToProto(r.matrix_entropy->anisotropy, s->mutable_anisotropy());
    ToProto(r.matrix_entropy->normalized_entropy, s->mutable_normalized_entropy());
    s->set_post_final_norm(r.matrix_entropy->post_final_norm);
  }
  if (!r.activation_stats.empty()) {
    auto* s = p->mutable_activation_stats();
    for (const auto& e : r.activation_stats) {
      auto* pe = s->add_entries();
      pe->set_hook(e.hook);
      pe->set_positions(e.positions == job::PositionClass::kBos    ? v1::POSITION_CLASS_BOS
                        : e.positions == job::PositionClass::kRest ? v1::POSITION_CLASS_REST
                                                                   : v1::POSITION_CLASS_ALL);
      pe->set_count(e.count);
      pe->set_mean(e.mean);
      pe->set_std(e.std);
      pe->set_max_abs(e.max_abs);
      pe->set_mean_norm(e.mean_norm);
      pe->set_max_norm(e.max_norm);
      for (int32_t d : e.top_dims) pe->add_top_dims(d);
      for (double v : e.top_values) pe->add_top_values(v);
    }
  }
}

void ToProto(const job::PerplexityResult& r, v1::PerplexityResult* p) {
  p->set_model(r.model);
  p->set_condition(r.condition);
  p->set_perplexity(r.perplexity);
  p->set_mean_nll(r.mean_nll);
  p->set_num_targets(r.num_targets);
  p->set_ratio_to_baseline(r.ratio_to_baseline);
  for (double v : r.control_perplexities) p->add_control_perplexities(v);
  if (!r.control_perplexities.empty()) ToProto(r.control, p->mutable_control());
  p->set_detail(r.detail);
  p->set_resolved_layer(r.resolved_layer);
  p->set_disrupted_dims(r.disrupted_dims);
}

void ToProto(const job::Summary& s, v1::Summary* p) {
  for (const auto& m : s.models) {
    auto* pm = p->add_models();
    pm->set_model(m.model);
    for (const auto& [k, v] : m.metrics) (*pm->mutable_metrics())[k] = v;
    pm->set_weights_digest(m.weights_digest);
    pm->set_tokenizer_digest(m.tokenizer_digest);
    pm->set_dtype(m.dtype);
    pm->set_device(m.device);
    pm->set_num_prompts(m.num_prompts);
    pm->set_num_tokens(m.num_tokens);
    pm->set_num_forward_passes(m.num_forward_passes);
  }
  for (const auto& r : s.comparison) {
    auto* pr = p->add_comparison();
    pr->set_metric(r.metric);
    for (double v : r.values) pr->add_values(v);
    for (double v : r.diffs) pr->add_diffs(v);
    for (double v : r.ratios) pr->add_ratios(v);
  }
  for (const auto& r : s.perplexity) ToProto(r, p->add_perplexity());
  p->set_inputs_digest(s.inputs_digest);
  p->set_seed(s.seed);
  p->set_elapsed_seconds(s.elapsed_seconds);
}

void ToProto(const job::Progress& s, v1::Progress* p) {
  p->set_fraction(s.fraction);
  p->set_model(s.model);
  p->set_condition(s.condition);
  p->set_prompt(s.prompt);
  p->set_num_prompts(s.num_prompts);
  p->set_layer(s.layer);
}

}  // namespace sinkscope::server
