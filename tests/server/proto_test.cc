// Contract tests: every message kind survives binary and JSON round trips; enum zero values mean "default".
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "sinkscope/v1/service.pb.h"

namespace v1 = sinkscope::v1;
using google::protobuf::util::MessageDifferencer;

namespace {

v1::JobSpec FullSpec() {
  v1::JobSpec s;
  s.add_models("tiny-rope");
  s.add_models("tiny-drope");
  s.mutable_inputs()->mutable_texts()->add_texts("The quick brown fox.");
  s.mutable_inputs()->set_max_prompts(3);
  s.mutable_limits()->set_max_tokens(256);
  auto* sr = s.add_analyses()->mutable_sink_rate();
  sr->set_tau(0.3);
  sr->set_query_rows(v1::QUERY_ROWS_EXCLUDE_BOS);
  sr->set_source(v1::ATTENTION_SOURCE_PRE_ROTARY);
  auto* mv = s.add_analyses()->mutable_massive_values();
  mv->set_lambda(5);
  mv->add_tensors(v1::QKV_TENSOR_Q);
  mv->set_post_rotary(true);
  mv->set_scope(v1::THRESHOLD_SCOPE_HEAD);
  s.add_analyses()->mutable_residual_stats()->set_final_norm_last_layer(true);
  s.add_analyses()->mutable_matrix_entropy()->set_normalized(true);
  s.add_analyses()->mutable_activation_stats()->add_hooks("blocks.{L}.hook_resid_post");
  auto* p = s.add_analyses()->mutable_perplexity();
  p->add_interventions()->mutable_bos_mlp()->set_spike(v1::SPIKE_RULE_ARGMAX_JUMP);
  auto* qk = p->add_interventions()->mutable_qk_massive();
  qk->add_control_seeds(42);
  qk->mutable_identify_on()->set_dataset("study-disruption-literary");
  p->add_interventions()->mutable_top_per_head()->set_k(1);
  auto* h = p->add_interventions()->mutable_heads()->add_heads();
  h->set_layer(1);
  h->set_head(2);
  auto* e = p->add_interventions()->mutable_edits()->add_edits();
  e->set_hook("blocks.0.hook_mlp_out");
  e->set_op(v1::EDIT_OP_SCALE);
  e->set_value(0.5);
  e->add_positions(0);
  s.set_priority(3);
  s.set_deadline_seconds(60);
  s.set_label("round trip");
  s.set_seed(7);
  return s;
}

TEST(Proto, JobSpecBinaryRoundTrip) {
  const v1::JobSpec s = FullSpec();
  v1::JobSpec back;
  ASSERT_TRUE(back.ParseFromString(s.SerializeAsString()));
  EXPECT_TRUE(MessageDifferencer::Equals(s, back));
}

TEST(Proto, JobSpecJsonRoundTrip) {
  const v1::JobSpec s = FullSpec();
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(s, &json).ok());
  EXPECT_NE(json.find("\"sinkRate\""), std::string::npos);  // lowerCamelCase JSON names
  v1::JobSpec back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok());
  EXPECT_TRUE(MessageDifferencer::Equals(s, back));
}

TEST(Proto, OptionalScalarsDistinguishUnsetFromZero) {
  v1::SinkRateAnalysis a;
  EXPECT_FALSE(a.has_tau());
  a.set_tau(0.0);
  v1::SinkRateAnalysis back;
  ASSERT_TRUE(back.ParseFromString(a.SerializeAsString()));
  EXPECT_TRUE(back.has_tau());
}

TEST(Proto, EventsStayFarBelowDefaultMessageLimit) {
  // A Llama-2-7B-sized layer result (32 heads, top-64 per tensor, many activation stat entries) must be far
  // below gRPC's 4 MiB default.
  v1::JobEvent ev;
  auto* l = ev.mutable_layer();
  l->set_model("llama2-7b-drope");
  for (int h = 0; h < 32; ++h) l->mutable_sink_rate()->add_head_scores(0.5);
  for (auto t : {v1::QKV_TENSOR_Q, v1::QKV_TENSOR_K, v1::QKV_TENSOR_V}) {
    auto* mt = l->mutable_massive_values()->add_tensors();
    mt->set_tensor(t);
    for (int i = 0; i < 64; ++i) mt->add_top()->set_value(i);
  }
  for (int i = 0; i < 60; ++i) {
    auto* e = l->mutable_activation_stats()->add_entries();
    e->set_hook("blocks.31.attn.hook_rot_q");
    for (int k = 0; k < 64; ++k) {
      e->add_top_dims(k);
      e->add_top_values(k);
    }
  }
  EXPECT_LT(ev.ByteSizeLong(), 256u * 1024);
}

TEST(Proto, EnumZeroIsUnspecified) {
  EXPECT_EQ(v1::JobState_Name(v1::JobState()), "JOB_STATE_UNSPECIFIED");
  EXPECT_EQ(v1::QueryRows_Name(v1::QueryRows()), "QUERY_ROWS_UNSPECIFIED");
  EXPECT_EQ(v1::PositionalScheme_Name(v1::PositionalScheme()), "POSITIONAL_SCHEME_UNSPECIFIED");
}

}  // namespace
