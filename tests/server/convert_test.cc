// proto -> engine conversion (structure only) and the engine's rules reached through it: a spec goes through
// FromProto and then job::BuildPlan against a real model, as SubmitJob does.
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "common/job/plan.h"
#include "server/convert.h"
#include "server/registry.h"

namespace v1 = sinkscope::v1;
using sinkscope::server::FromProto;
using sinkscope::server::ServerFieldsFromProto;
using sinkscope::server::ToProto;

namespace {

// The shipped tiny RoPE model, registered as "m" (the name every spec below uses).
const sinkscope::server::Registry& Models() {
  static auto* r = [] {
    auto* reg = new std::shared_ptr<sinkscope::server::Registry>(sinkscope::server::MakeRegistry(
        {{"m", std::string(SINKSCOPE_SOURCE_DIR) + "/models/tiny-rope", "float32", "cpu", ""}}));
    (*reg)->StartLoading(std::chrono::seconds(600));
    (*reg)->WaitLoaded();
    return reg->get();
  }();
  return *r;
}

// What SubmitJob does with a spec before queueing it: convert, then validate and plan with the engine.
absl::Status Submitted(const v1::JobSpec& s) {
  auto spec = FromProto(s);
  if (!spec.ok()) return spec.status();
  if (auto server = ServerFieldsFromProto(s); !server.ok()) return server.status();
  std::vector<sinkscope::job::ModelHandle> handles;
  for (const auto& name : spec->models) {
    auto h = Models().Handle(name);
    if (!h.ok()) return h.status();
    handles.push_back(*h);
  }
  sinkscope::job::RunLimits limits;
  limits.data_dir = std::string(SINKSCOPE_SOURCE_DIR) + "/models/datasets";
  return sinkscope::job::BuildPlan(*std::move(spec), std::move(handles), limits).status();
}

v1::JobSpec Minimal() {
  v1::JobSpec s;
  s.add_models("m");
  s.mutable_inputs()->mutable_texts()->add_texts("hello");
  s.add_analyses()->mutable_sink_rate();
  return s;
}

void ExpectBad(const v1::JobSpec& s, const std::string& needle) {
  const absl::Status st = Submitted(s);
  ASSERT_FALSE(st.ok()) << needle;
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(needle), std::string::npos) << st;
}

TEST(Convert, DefaultsMatchTheStudy) {
  auto r = FromProto(Minimal());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->analyses.size(), 1u);
  const auto& sr = std::get<sinkscope::job::SinkRateSpec>(r->analyses[0]);
  EXPECT_DOUBLE_EQ(sr.tau, 0.3);
  EXPECT_EQ(sr.query_rows, sinkscope::job::QueryRows::kAll);
  EXPECT_EQ(sr.source, sinkscope::job::AttentionSource::kModel);
  EXPECT_EQ(r->seed, 42u);
  ASSERT_TRUE(Submitted(Minimal()).ok()) << Submitted(Minimal());
  const v1::JobSpec d = ToProto(*r, {});  // Job.spec: stored with the defaults made explicit
  EXPECT_TRUE(d.analyses(0).sink_rate().has_tau());
  EXPECT_DOUBLE_EQ(d.analyses(0).sink_rate().tau(), 0.3);
  EXPECT_EQ(d.seed(), 42u);
}

TEST(Convert, MassiveDefaultsAndExplicitZeroTau) {
  v1::JobSpec s = Minimal();
  s.mutable_analyses(0)->mutable_sink_rate()->set_tau(0.0);
  s.add_analyses()->mutable_massive_values();
  auto r = FromProto(s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_DOUBLE_EQ(std::get<sinkscope::job::SinkRateSpec>(r->analyses[0]).tau, 0.0);
  const auto& mv = std::get<sinkscope::job::MassiveValuesSpec>(r->analyses[1]);
  EXPECT_DOUBLE_EQ(mv.lambda, 5.0);
  EXPECT_EQ(mv.tensors.size(), 3u);
  EXPECT_EQ(mv.top_k, 8);
}

TEST(Convert, InterventionsConvert) {
  v1::JobSpec s = Minimal();
  auto* p = s.add_analyses()->mutable_perplexity();
  p->add_interventions()->mutable_bos_mlp()->set_layer(1);
  p->add_interventions()->mutable_bos_mlp()->set_spike(v1::SPIKE_RULE_ARGMAX_JUMP);
  auto* q = p->add_interventions()->mutable_qk_massive();
  q->add_control_seeds(42);
  q->add_control_seeds(43);
  q->set_replacement(v1::REPLACEMENT_MEAN);
  auto r = FromProto(s);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& ps = std::get<sinkscope::job::PerplexitySpec>(r->analyses[1]);
  ASSERT_EQ(ps.interventions.size(), 3u);
  EXPECT_EQ(*std::get<sinkscope::job::BosMlpAblation>(ps.interventions[0].kind).layer, 1);
  EXPECT_FALSE(std::get<sinkscope::job::BosMlpAblation>(ps.interventions[1].kind).layer.has_value());
  EXPECT_EQ(std::get<sinkscope::job::BosMlpAblation>(ps.interventions[1].kind).spike_rule,
            sinkscope::job::SpikeRule::kArgmaxJump);
  const auto& qk = std::get<sinkscope::job::QkMassiveDisruption>(ps.interventions[2].kind);
  EXPECT_TRUE(qk.q && qk.k);  // neither set = both
  EXPECT_EQ(qk.control_seeds.size(), 2u);
  EXPECT_EQ(qk.replacement, sinkscope::job::Replacement::kMean);
}

TEST(Convert, BadSpecsNameTheField) {
  {
    v1::JobSpec s = Minimal();
    s.clear_models();
    ExpectBad(s, "models: at least one model");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_models("m");
    ExpectBad(s, "models[1]: duplicate");
  }
  {
    v1::JobSpec s = Minimal();
    s.clear_inputs();
    ExpectBad(s, "inputs: required");
  }
  {
    v1::JobSpec s = Minimal();
    s.mutable_inputs()->mutable_texts()->add_texts("");
    ExpectBad(s, "inputs.texts[1]: empty text");
  }
  {
    v1::JobSpec s = Minimal();
    s.mutable_inputs()->mutable_token_ids()->add_prompts();
    ExpectBad(s, "inputs.token_ids[0]: empty prompt");
  }
  {
    v1::JobSpec s = Minimal();
    s.clear_analyses();
    ExpectBad(s, "analyses: at least one");
  }
  {
    v1::JobSpec s = Minimal();
    s.mutable_analyses(0)->mutable_sink_rate()->set_tau(1.5);
    ExpectBad(s, "analyses[0].sink_rate.tau: 1.5 not in [0,1]");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses();
    ExpectBad(s, "analyses[1]: no analysis kind set");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_massive_values()->set_lambda(-2);
    ExpectBad(s, "analyses[1].massive_values.lambda");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_massive_values()->set_top_k(65);
    ExpectBad(s, "analyses[1].massive_values.top_k");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_perplexity()->add_interventions();
    ExpectBad(s, "analyses[1].perplexity.interventions[0]: no intervention kind set");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_perplexity()->add_interventions()->mutable_edits()->add_edits()->set_hook("x");
    ExpectBad(s, "interventions[0].edits[0].op");
  }
  {
    v1::JobSpec s = Minimal();
    s.set_priority(11);
    ExpectBad(s, "priority: 11 not in [-10,10]");
  }
  {
    v1::JobSpec s = Minimal();
    s.set_deadline_seconds(-1);
    ExpectBad(s, "deadline_seconds");
  }
  {
    v1::JobSpec s = Minimal();
    s.mutable_limits()->set_max_tokens(1);
    ExpectBad(s, "max_tokens: must be >= 2");  // the engine's name for limits.max_tokens
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_activation_stats();
    ExpectBad(s, "analyses[1].activation_stats.hooks: empty list");
  }
}

TEST(Convert, UnknownEnumValuesNameTheField) {
  {
    v1::JobSpec s = Minimal();
    s.mutable_analyses(0)->mutable_sink_rate()->set_query_rows(static_cast<v1::QueryRows>(7));
    ExpectBad(s, "analyses[0].sink_rate.query_rows: invalid value 7");
  }
  {
    v1::JobSpec s = Minimal();
    s.add_analyses()->mutable_massive_values()->add_tensors(v1::QKV_TENSOR_UNSPECIFIED);
    ExpectBad(s, "analyses[1].massive_values.tensors[0]: invalid value 0 (expected Q, K or V)");
  }
}

TEST(Convert, StoredSpecHasEveryDefaultAndRoundTrips) {
  v1::JobSpec s = Minimal();
  s.set_priority(3);
  s.set_label("x");
  auto* p = s.add_analyses()->mutable_perplexity();
  p->add_interventions()->mutable_qk_massive();
  p->add_interventions()->mutable_top_per_head();
  p->add_interventions()->mutable_bos_mlp();
  s.add_analyses()->mutable_massive_values();
  auto spec = FromProto(s);
  auto server = ServerFieldsFromProto(s);
  ASSERT_TRUE(spec.ok() && server.ok());
  const v1::JobSpec stored = ToProto(*spec, *server);
  EXPECT_EQ(stored.priority(), 3);
  EXPECT_EQ(stored.label(), "x");
  EXPECT_EQ(stored.seed(), 42u);
  const auto& ivs = stored.analyses(1).perplexity().interventions();
  EXPECT_DOUBLE_EQ(ivs[0].qk_massive().lambda(), 5.0);
  EXPECT_EQ(ivs[0].qk_massive().scope(), v1::THRESHOLD_SCOPE_LAYER);
  EXPECT_TRUE(ivs[0].qk_massive().q() && ivs[0].qk_massive().k());
  EXPECT_EQ(ivs[1].top_per_head().k(), 1);
  EXPECT_EQ(ivs[2].bos_mlp().spike(), v1::SPIKE_RULE_ARGMAX_RATIO);
  EXPECT_EQ(stored.analyses(2).massive_values().tensors_size(), 3);
  EXPECT_EQ(stored.analyses(2).massive_values().top_k(), 8);
  // Converting the stored spec again changes nothing.
  auto again = FromProto(stored);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(ToProto(*again, *server), stored));
}

}  // namespace
