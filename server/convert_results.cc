// Engine results, events, models and datasets -> sinkscope.v1 (see convert.h).
#include "absl/strings/str_replace.h"
#include "common/model/hooks.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "server/convert.h"
#include "server/convert_enums.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;
using internal::EnumToProto;

void ToProto(const job::Stat& s, v1::Stat* p) {
  p->set_mean(s.mean);
  p->set_std(s.std);
  p->set_n(s.n);
}

namespace {

// Several per-layer statistics into their proto fields.
void StatsTo(std::initializer_list<std::pair<const job::Stat*, v1::Stat*>> stats) {
  for (auto [from, to] : stats) ToProto(*from, to);
}

}  // namespace

void ToProto(const job::LayerResult& r, v1::LayerResult* p) {
  p->set_model(r.model);
  p->set_layer(r.layer);
  p->set_prompts_done(r.prompts_done);
  p->set_prompts_total(r.prompts_total);
  p->set_partial(r.partial);
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
      pt->set_tensor(EnumToProto(internal::kQkvTensors, t.tensor));
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
  if (const auto& rs = r.residual_stats) {
    auto* s = p->mutable_residual_stats();
    StatsTo({{&rs->bos_norm, s->mutable_bos_norm()}, {&rs->mean_other_norm, s->mutable_mean_other_norm()},
             {&rs->ratio, s->mutable_ratio()}});
    s->set_post_final_norm(rs->post_final_norm);
  }
  if (const auto& me = r.matrix_entropy) {
    auto* s = p->mutable_matrix_entropy();
    StatsTo({{&me->entropy, s->mutable_entropy()}, {&me->anisotropy, s->mutable_anisotropy()},
             {&me->normalized_entropy, s->mutable_normalized_entropy()}});
    s->set_post_final_norm(me->post_final_norm);
  }
  if (!r.activation_stats.empty()) {
    auto* s = p->mutable_activation_stats();
    for (const auto& e : r.activation_stats) {
      auto* pe = s->add_entries();
      pe->set_hook(e.hook);
      pe->set_positions(EnumToProto(internal::kPositionClasses, e.positions));
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

void ToProto(const job::PromptResult& r, v1::PromptResult* p) {
  p->set_model(r.model);
  p->set_prompt(r.prompt);
  p->set_num_tokens(r.num_tokens);
  p->mutable_token_ids()->Add(r.token_ids.begin(), r.token_ids.end());
  for (const job::PromptLayer& l : r.layers) {
    v1::PromptLayerMetrics* m = p->add_layers();
    m->set_layer(l.layer);
    if (l.sink_rate) m->set_sink_rate(*l.sink_rate);
    m->mutable_head_scores()->Add(l.head_scores.begin(), l.head_scores.end());
    if (l.bos_norm) m->set_bos_norm(*l.bos_norm);
    if (l.mean_other_norm) m->set_mean_other_norm(*l.mean_other_norm);
    if (l.bos_ratio) m->set_bos_ratio(*l.bos_ratio);
    if (l.entropy) m->set_entropy(*l.entropy);
    if (l.anisotropy) m->set_anisotropy(*l.anisotropy);
    m->mutable_massive_counts()->Add(l.massive_counts.begin(), l.massive_counts.end());
  }
  for (const job::PromptPerplexity& c : r.perplexity) {
    v1::PromptPerplexity* pp = p->add_perplexity();
    pp->set_condition(c.condition);
    pp->set_nll_sum(c.nll_sum);
    pp->set_num_targets(c.num_targets);
    pp->set_perplexity(c.perplexity);
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
    pm->set_truncated_prompts(m.truncated_prompts);
    pm->set_layers_computed(m.layers_computed);
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

void ToProto(const job::Started& s, v1::Started* p) {
  p->set_planned_passes(s.planned_passes);
  p->set_num_prompts(s.num_prompts);
}

void ToProto(const job::Dataset& d, v1::DatasetInfo* p) {
  p->set_name(d.name);
  p->set_description(d.description);
  p->set_num_prompts(static_cast<int32_t>(d.prompts.size()));
  p->set_digest(d.digest);
  p->set_source(d.source);
}

void ToProto(const model::LlamaModel& m, const tokenizer::Tokenizer* tok, v1::ModelInfo* p) {
  const auto& c = m.config();
  p->set_architecture("LlamaForCausalLM");
  p->set_model_type(c.model_type);
  p->set_positional_scheme(c.uses_rope() ? v1::POSITIONAL_SCHEME_ROPE : v1::POSITIONAL_SCHEME_NOPE);
  p->set_attention_type(model::AttentionTypeName(c.attention_type));
  p->set_num_layers(static_cast<int32_t>(c.num_hidden_layers));
  p->set_hidden_size(static_cast<int32_t>(c.hidden_size));
  p->set_num_heads(static_cast<int32_t>(c.num_attention_heads));
  p->set_num_kv_heads(static_cast<int32_t>(c.num_key_value_heads));
  p->set_head_dim(static_cast<int32_t>(c.head_dim));
  p->set_intermediate_size(static_cast<int32_t>(c.intermediate_size));
  p->set_vocab_size(static_cast<int32_t>(c.vocab_size));
  p->set_max_position_embeddings(static_cast<int32_t>(c.max_position_embeddings));
  p->set_num_parameters(c.num_parameters());
  p->set_dtype(m.dtype());
  p->set_checkpoint_dtype(c.torch_dtype);
  p->set_device(m.device());
  p->set_weight_bytes(m.weight_bytes());
  p->set_weights_digest(m.weights_digest());
  if (tok != nullptr) p->set_tokenizer_digest(tok->digest());  // none: the model serves token-id jobs only
  p->set_attention_scale(c.attention_scale());
  p->set_rope_theta(c.rope_theta);
  // The names of a one-layer model, with its layer index turned into the {L} placeholder.
  for (const auto& n : model::AllHookNames(1))
    p->add_hook_points(absl::StrReplaceAll(n, {{"blocks.0.", "blocks.{L}."}}));
}

template <typename T, typename P>
void JobEventSink::Send(const T& result, P* (v1::JobEvent::*slot)()) {
  v1::JobEvent ev;
  ToProto(result, (ev.*slot)());
  emit_(std::move(ev));
}

void JobEventSink::OnStarted(const job::Started& s) { Send(s, &v1::JobEvent::mutable_started); }
void JobEventSink::OnProgress(const job::Progress& p) { Send(p, &v1::JobEvent::mutable_progress); }
void JobEventSink::OnLayer(const job::LayerResult& r) { Send(r, &v1::JobEvent::mutable_layer); }
void JobEventSink::OnPerplexity(const job::PerplexityResult& r) { Send(r, &v1::JobEvent::mutable_perplexity); }
void JobEventSink::OnPrompt(const job::PromptResult& r) { Send(r, &v1::JobEvent::mutable_prompt); }
void JobEventSink::OnSummary(const job::Summary& s) { Send(s, &v1::JobEvent::mutable_summary); }

void ToProto(const job::RunLimits& limits, int32_t max_queued_jobs, int32_t max_request_bytes, v1::ServerLimits* p) {
  p->set_max_tokens_per_prompt(limits.max_tokens_per_prompt);
  p->set_max_prompts_per_job(limits.max_prompts);
  p->set_max_queued_jobs(max_queued_jobs);
  p->set_max_request_bytes(max_request_bytes);
  p->set_pack_tokens(limits.pack_tokens);
  p->set_max_tokens_per_job(limits.max_tokens_per_job);
  p->set_max_planned_passes(limits.max_planned_passes);
  p->set_forward_memory_bytes(limits.forward_memory_bytes);
  p->set_residual_memory_bytes(limits.residual_memory_bytes);
  using Attention = job::RunLimits::Attention;
  p->set_attention(limits.attention == Attention::kAuto          ? "auto"
                   : limits.attention == Attention::kEqualLength ? "equal"
                                                                 : "padded");
}

}  // namespace sinkscope::server
