#include "tests/client/events.h"

#include <cmath>

namespace sinkscope::testing {
namespace v1 = sinkscope::v1;

namespace {

void SetStat(v1::Stat* s, double mean, double std, int n) {
  s->set_mean(mean);
  s->set_std(std);
  s->set_n(n);
}

}  // namespace

std::vector<v1::JobEvent> MakeEvents(const SyntheticJob& j) {
  std::vector<v1::JobEvent> evs;
  auto add = [&]() -> v1::JobEvent& {
    evs.emplace_back();
    evs.back().set_job_id(j.job_id);
    evs.back().set_seq(evs.size() - 1);
    evs.back().mutable_time()->set_seconds(1700000000 + static_cast<int64_t>(evs.size()));
    return evs.back();
  };
  add().mutable_accepted()->set_queue_position(0);
  auto& st = add();
  st.mutable_started()->set_planned_passes(static_cast<int>(j.models.size()) * 13);
  st.mutable_started()->set_num_prompts(j.prompts);
  for (size_t mi = 0; mi < j.models.size(); ++mi) {
    const std::string& m = j.models[mi];
    const bool drope = mi == 1;
    auto& pr = add();
    pr.mutable_progress()->set_fraction(0.1 + 0.4 * mi);
    pr.mutable_progress()->set_model(m);
    pr.mutable_progress()->set_condition("baseline");
    pr.mutable_progress()->set_num_prompts(j.prompts);
    pr.mutable_progress()->set_layer(-1);
    for (int l = 0; l < j.layers; ++l) {
      auto* r = add().mutable_layer();
      r->set_model(m);
      r->set_layer(l);
      auto* s = r->mutable_sink_rate();
      const double rate = l < 2 ? 0.0 : drope ? 0.71875 : 0.96875 - 0.001 * l;
      SetStat(s->mutable_sink_rate(), rate, 0.03125 * (l % 3), j.prompts);
      s->set_tau(0.3);
      for (int h = 0; h < j.heads; ++h) s->add_head_scores(std::fmod(0.123456789 * (h + 1) * (l + 1), 1.0));
      auto* rs = r->mutable_residual_stats();
      const double bos = l == (drope ? 2 : 1) ? 712.34567 : 10.0 + l;
      SetStat(rs->mutable_bos_norm(), bos, 1.5, j.prompts);
      SetStat(rs->mutable_mean_other_norm(), 8.0 + 0.5 * l, 0.25, j.prompts);
      SetStat(rs->mutable_ratio(), bos / (8.0 + 0.5 * l), 0.2, j.prompts);
      auto* me = r->mutable_matrix_entropy();
      SetStat(me->mutable_entropy(), 3.5 - 0.05 * l + (drope ? 0.3 : 0), 0.1, j.prompts);
      SetStat(me->mutable_anisotropy(), 0.2 + 0.01 * l, 0.01, j.prompts);
      auto* mv = r->mutable_massive_values();
      mv->set_lambda(5);
      for (auto t : {v1::QKV_TENSOR_Q, v1::QKV_TENSOR_K, v1::QKV_TENSOR_V}) {
        auto* x = mv->add_tensors();
        x->set_tensor(t);
        const double c = t == v1::QKV_TENSOR_V ? 0 : (drope ? 3 : 12) + (l % 5);
        SetStat(x->mutable_count(), c, c > 0 ? 1.25 : 0, j.prompts);
        x->set_threshold(42.5);
        x->set_gini(0.61);
        for (int k = 0; k < 3; ++k) {
          auto* d = x->add_top();
          d->set_head(k);
          d->set_dim(100 + k);
          d->set_value(300.0 / (k + 1));
        }
      }
      if (j.activation_stats) {
        auto* e = r->mutable_activation_stats()->add_entries();
        e->set_hook("blocks." + std::to_string(l) + ".hook_resid_post");
        e->set_positions(v1::POSITION_CLASS_BOS);
        e->set_count(4096);
        e->set_mean(0.5);
        e->set_std(1.5);
        e->set_max_abs(700);
        e->set_mean_norm(12);
        e->set_max_norm(13);
        e->add_top_dims(1415);
        e->add_top_values(650);
      }
    }
    const double base = drope ? 15.25 : 10.5;
    auto ppl = [&](const std::string& c, double p, int layer, int dims) -> v1::PerplexityResult* {
      auto* r = add().mutable_perplexity();
      r->set_model(m);
      r->set_condition(c);
      r->set_perplexity(p);
      r->set_mean_nll(std::log(p));
      r->set_num_targets(1234);
      r->set_ratio_to_baseline(p / base);
      r->set_resolved_layer(layer);
      r->set_disrupted_dims(dims);
      return r;
    };
    ppl("baseline", base, -1, 0);
    ppl("bos_mlp@spike", drope ? 18.5 : 950.75, drope ? 2 : 1, 0)
        ->set_detail(drope ? "layer 2 (argmax_ratio)" : "layer 1 (argmax_ratio)");
    auto* qk = ppl("qk_massive", drope ? 16.0 : 25.0, -1, drope ? 120 : 2946);
    qk->set_detail(drope ? "120 dims in 30 layers" : "2946 dims in 32 layers");
    for (double c : {10.6, 10.7, 10.8}) qk->add_control_perplexities(c + (drope ? 5 : 0));
    SetStat(qk->mutable_control(), 10.7 + (drope ? 5 : 0), 0.08165, 3);
    if (j.per_prompt) {
      for (int p = 0; p < j.prompts; ++p) {
        auto* r = add().mutable_prompt();
        r->set_model(m);
        r->set_prompt(p);
        r->set_num_tokens(40 + p);
        if (j.token_ids)
          for (int t = 0; t < 40 + p; ++t) r->add_token_ids(t == 0 ? 1 : 100 + t);
        for (int l = 0; l < j.layers; ++l) {
          auto* pl = r->add_layers();
          pl->set_layer(l);
          pl->set_sink_rate(l < 2 ? 0 : 0.75);
          for (int h = 0; h < j.heads; ++h) pl->add_head_scores(0.5);
          pl->set_bos_norm(10 + l);
          pl->set_mean_other_norm(8);
          pl->set_bos_ratio((10.0 + l) / 8);
          pl->set_entropy(3.25);
          pl->set_anisotropy(0.25);
          pl->add_massive_counts(12);
          pl->add_massive_counts(11);
          pl->add_massive_counts(0);
        }
        for (const char* c : {"baseline", "bos_mlp@spike", "qk_massive", "qk_massive/control_seed_42"}) {
          auto* pp = r->add_perplexity();
          pp->set_condition(c);
          pp->set_nll_sum(80.5 + p);
          pp->set_num_targets(39 + p);
          pp->set_perplexity(std::exp((80.5 + p) / (39 + p)));
        }
      }
    }
  }
  auto* s = add().mutable_summary();
  for (size_t mi = 0; mi < j.models.size(); ++mi) {
    auto* m = s->add_models();
    m->set_model(j.models[mi]);
    (*m->mutable_metrics())["sink_rate.mean"] = mi ? 0.65 : 0.875;
    (*m->mutable_metrics())["bos_spike_layer.argmax_ratio"] = mi ? 2 : 1;
    (*m->mutable_metrics())["perplexity.qk_massive.increase_pct"] = mi ? -2.5 : 138.1;
    m->set_weights_digest(std::string(64, mi ? 'b' : 'a'));
    m->set_tokenizer_digest(std::string(64, 'c'));
    m->set_dtype("bfloat16");
    m->set_device("cuda:0");
    m->set_num_prompts(j.prompts);
    m->set_num_tokens(123);
    m->set_num_forward_passes(13);
  }
  auto row = [&](const std::string& metric, double a, double b) {
    auto* r = s->add_comparison();
    r->set_metric(metric);
    r->add_values(a);
    r->add_values(b);
    r->add_diffs(0);
    r->add_diffs(b - a);
    r->add_ratios(1);
    r->add_ratios(a == 0 ? 0 : b / a);
  };
  row("bos_spike_layer.argmax_ratio", 1, 2);
  row("massive_values.q.total", 1234, 456);
  row("perplexity.bos_mlp@spike.ratio", 90.5452, 1.2131);
  row("perplexity.qk_massive.increase_pct", 138.1, -142.6);
  row("perplexity.qk_massive.massive_minus_random_pct", 136.2, -146.3);
  row("sink_rate.mean", 0.875, 0.65);
  s->set_inputs_digest(std::string(64, 'd'));
  s->set_seed(42);
  s->set_server_version("0.1.0");
  s->set_elapsed_seconds(12.5);
  add().mutable_finished()->set_state(v1::JOB_STATE_SUCCEEDED);
  return evs;
}

}  // namespace sinkscope::testing
