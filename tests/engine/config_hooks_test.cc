// config.json parsing and hook-name tests (no forward passes).
#include <gtest/gtest.h>

#include <string>

#include "common/model/config.h"
#include "common/model/hooks.h"
#include "nlohmann/json.hpp"

namespace sinkscope::model {
namespace {

using nlohmann::json;

// Llama-2-7b-hf config.json (public copy, docs/study.md §2.2).
json Llama2Config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})");
}

absl::Status ParseJ(const json& j) { return ParseLlamaConfig(j.dump()).status(); }

void ExpectInvalid(const json& j, const std::string& needle) {
  absl::Status st = ParseJ(j);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find(needle), std::string::npos) << "message: " << st.message();
}

TEST(Config, Llama2_7B) {
  auto c = ParseLlamaConfig(Llama2Config().dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->attention_type, AttentionType::kRope);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c->attention_scale(), 1.0 / std::sqrt(128.0));
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->num_parameters(), 6738415616LL);  // Llama-2-7b parameter count
  EXPECT_STREQ(AttentionTypeName(c->attention_type), "rope");
}

TEST(Config, DropeVariants) {
  json j = Llama2Config();
  j["model_type"] = "llama_drope";
  auto c = ParseLlamaConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->attention_type, AttentionType::kNope);  // DroPELlamaConfig default
  EXPECT_FALSE(c->uses_rope());
  EXPECT_FALSE(c->has_q_norm());
  for (auto [name, type] : {std::pair<const char*, AttentionType>{"nope", AttentionType::kNope},
                            {"qk_norm_nope", AttentionType::kQkNormNope},
                            {"q_norm_nope", AttentionType::kQNormNope},
                            {"k_norm_nope", AttentionType::kKNormNope}}) {
    j["attention_type"] = name;
    auto v = ParseLlamaConfig(j.dump());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->attention_type, type);
    EXPECT_STREQ(AttentionTypeName(type), name);
  }
  j["attention_type"] = "qk_norm_nope";
  auto q = ParseLlamaConfig(j.dump());
  EXPECT_TRUE(q->has_q_norm() && q->has_k_norm());
  EXPECT_EQ(q->num_parameters(), 6738415616LL + 32 * 2 * 4096);
  j["softmax_scale"] = 0.05;
  EXPECT_DOUBLE_EQ(ParseLlamaConfig(j.dump())->attention_scale(), 0.05);
  j["softmax_scale"] = nullptr;  // null = default scale (HF SDPA scale=None)
  EXPECT_DOUBLE_EQ(ParseLlamaConfig(j.dump())->attention_scale(), 1.0 / std::sqrt(128.0));
}

TEST(Config, GqaHeadDimTiedAndNewDtypeKey) {
  json j = Llama2Config();
  j["num_key_value_heads"] = 8;
  j["head_dim"] = 64;
  j["tie_word_embeddings"] = true;
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j["eos_token_id"] = json::array({2, 3});
  auto c = ParseLlamaConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->eos_token_id, 2);
  // defaults when optional fields are absent
  json m = Llama2Config();
  for (const char* k : {"num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "torch_dtype",
                        "bos_token_id", "eos_token_id", "rope_scaling"})
    m.erase(k);
  auto d = ParseLlamaConfig(m.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(d->rms_norm_eps, 1e-6);
  EXPECT_EQ(d->bos_token_id, 1);
}

TEST(Config, BadFieldsNameTheField) {
  ExpectInvalid(json::parse("[1,2]"), "top level");
  EXPECT_EQ(ParseLlamaConfig("{not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(ParseLlamaConfig("{not json").status().message()).find("invalid JSON"), std::string::npos);
  json j = Llama2Config();
  j.erase("model_type");
  ExpectInvalid(j, "model_type");
  j = Llama2Config();
  j["model_type"] = "mistral";
  ExpectInvalid(j, "mistral");
  j = Llama2Config();
  j["model_type"] = "llama_drope";
  j["attention_type"] = "alibi";
  ExpectInvalid(j, "attention_type");
  j = Llama2Config();
  j["attention_type"] = "nope";  // NoPE needs model_type llama_drope
  ExpectInvalid(j, "attention_type");
  for (const char* k : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "max_position_embeddings"}) {
    j = Llama2Config();
    j.erase(k);
    ExpectInvalid(j, std::string("missing required field ") + k);
    j = Llama2Config();
    j[k] = 0;
    ExpectInvalid(j, k);
    j = Llama2Config();
    j[k] = "4096";
    ExpectInvalid(j, k);
  }
  j = Llama2Config();
  j["num_attention_heads"] = 7;
  j.erase("num_key_value_heads");
  ExpectInvalid(j, "num_attention_heads (7) does not divide hidden_size (4096)");
  // One bad field (over the Llama-2 config, or a DroPE one) -> an error naming it.
  struct Case {
    bool drope;
    const char* field;
    json value;
    const char* needle;
  };
  for (const Case& c : std::vector<Case>{
           {false, "num_key_value_heads", 5, "num_key_value_heads (5) does not divide num_attention_heads (32)"},
           {false, "rope_scaling", json::parse(R"({"type": "linear", "factor": 2.0})"), "rope_scaling"},
           {false, "head_dim", 127, "head_dim"},
           {false, "rms_norm_eps", -1, "rms_norm_eps"},
           {false, "rope_theta", "big", "rope_theta"},
           {false, "attention_bias", true, "attention_bias"},
           {false, "hidden_act", "gelu", "hidden_act"},
           {false, "torch_dtype", "float64", "torch_dtype"},
           {false, "eos_token_id", 32000, "eos_token_id"},
           {true, "softmax_scale", 0, "softmax_scale"},
           {false, "tie_word_embeddings", "yes", "tie_word_embeddings"},
       }) {
    j = Llama2Config();
    if (c.drope) j["model_type"] = "llama_drope";
    j[c.field] = c.value;
    ExpectInvalid(j, c.needle);
  }
}

TEST(Config, LoadFromMissingDirIsNotFound) {
  auto c = LoadLlamaConfig("/nonexistent-sinkscope-dir");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(c.status().message()).find("/nonexistent-sinkscope-dir/config.json"), std::string::npos);
}

TEST(Hooks, NamesInForwardOrder) {
  auto names = AllHookNames(2);
  ASSERT_EQ(names.size(), 2u + 2 * 15);
  EXPECT_EQ(names.front(), "hook_embed");
  EXPECT_EQ(names[1], "blocks.0.hook_resid_pre");
  EXPECT_EQ(names[3], "blocks.0.attn.hook_q");
  EXPECT_EQ(names[8], "blocks.0.attn.hook_pattern");
  EXPECT_EQ(names[15], "blocks.0.hook_resid_post");
  EXPECT_EQ(names[16], "blocks.1.hook_resid_pre");
  EXPECT_EQ(names.back(), "ln_final.hook_normalized");
  for (const auto& n : names) EXPECT_TRUE(ValidateHookName(n, 2).ok()) << n;
}

TEST(Hooks, ValidateRejectsTyposAndBadLayers) {
  auto st = ValidateHookName("blocks.0.hook_mlp_outt", 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("did you mean \"blocks.0.hook_mlp_out\""), std::string::npos) << st;
  st = ValidateHookName("blocks.2.hook_mlp_out", 2);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("layer 2 is out of range [0, 2)"), std::string::npos) << st;
  for (const char* bad : {"", "blocks", "blocks.", "blocks..hook_q", "blocks.x.attn.hook_q", "blocks.01.attn.hook_q",
                          "blocks.-1.attn.hook_q", "blocks.0.attn.hook_q ", "hook_embed.", "ln_final",
                          "blocks.0.hook_resid_pre.x", "blocks.99999999999999999999.hook_resid_pre"})
    EXPECT_EQ(ValidateHookName(bad, 2).code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST(Hooks, RunAppliesInterventionsInOrderThenObservers) {
  HookSet hs;
  EXPECT_TRUE(hs.empty());
  std::vector<std::string> log;
  hs.Intervene("blocks.0.hook_q", [&](const HookPoint& hp, const at::Tensor& x) {
    log.push_back("i1:" + hp.name);
    return x;
  });
  hs.Intervene("blocks.0.hook_q", [&](const HookPoint& hp, const at::Tensor& x) {
    log.push_back("i2:" + std::to_string(hp.layer));
    return x;
  });
  hs.Observe("blocks.0.hook_q", [&](const HookPoint& hp, const at::Tensor&) { log.push_back("o"); });
  EXPECT_TRUE(hs.Wants("blocks.0.hook_q"));
  EXPECT_FALSE(hs.Wants("blocks.0.hook_k"));
  hs.Run("blocks.0.hook_q", 0, at::Tensor());
  EXPECT_EQ(log, (std::vector<std::string>{"i1:blocks.0.hook_q", "i2:0", "o"}));
}

}  // namespace
}  // namespace sinkscope::model
