// config.json parsing for Llama / SakanaAI DroPE checkpoints (docs/study.md §2.2–§2.5). Torch-free.
//
// Required fields: model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, max_position_embeddings. Optional (HF LlamaConfig defaults): num_key_value_heads
// (= num_attention_heads), head_dim (= hidden_size / num_attention_heads), rms_norm_eps (1e-6), rope_theta (1e4),
// tie_word_embeddings (false), torch_dtype / dtype, bos_token_id (1), eos_token_id (2), attention_type
// (llama_drope only; default "nope" like DroPELlamaConfig), softmax_scale (llama_drope only; null = default).
// Unsupported features that would silently change the math are rejected: rope_scaling (non-null),
// attention_bias / mlp_bias (true), hidden_act other than "silu".
#include "common/model/config.h"

#include <cmath>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/util/file.h"
#include "nlohmann/json.hpp"

namespace sinkscope::model {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& msg) { return absl::InvalidArgumentError(absl::StrCat("config.json: ", msg)); }

// Reads an integer field. Absent or null -> `def` when not required.
absl::StatusOr<int64_t> GetInt(const json& j, const char* key, bool required, int64_t def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return Bad(absl::StrCat("missing required field ", key));
    return def;
  }
  if (!it->is_number_integer()) return Bad(absl::StrCat(key, " must be an integer, got ", it->dump()));
  return it->get<int64_t>();
}

absl::StatusOr<double> GetNumber(const json& j, const char* key, double def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) return Bad(absl::StrCat(key, " must be a number, got ", it->dump()));
  return it->get<double>();
}

absl::StatusOr<bool> GetBool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) return Bad(absl::StrCat(key, " must be a boolean, got ", it->dump()));
  return it->get<bool>();
}

// bos/eos may be an int, a list of ints (first one is used) or null (-1 = none).
absl::StatusOr<int64_t> GetTokenId(const json& j, const char* key, int64_t def) {
  auto it = j.find(key);
  if (it == j.end()) return def;
  if (it->is_null()) return -1;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer()) return (*it)[0].get<int64_t>();
  return Bad(absl::StrCat(key, " must be an integer or a list of integers, got ", it->dump()));
}

}  // namespace

const char* AttentionTypeName(AttentionType t) {
  switch (t) {
    case AttentionType::kRope: return "rope";
    case AttentionType::kNope: return "nope";
    case AttentionType::kQkNormNope: return "qk_norm_nope";
    case AttentionType::kQNormNope: return "q_norm_nope";
    case AttentionType::kKNormNope: return "k_norm_nope";
  }
  return "unknown";
}

// softmax_scale if the DroPE config sets it (SakanaAI from_source: module.scaling = config.softmax_scale),
// else the standard 1/sqrt(head_dim).
double LlamaConfig::attention_scale() const {
  if (softmax_scale.has_value()) return *softmax_scale;
  return 1.0 / std::sqrt(static_cast<double>(head_dim));
}

// embed V·d + per layer [2 norms d, q d·H·hd, k,v 2·d·Hkv·hd, o H·hd·d, MLP 3·d·I, q_norm H·hd, k_norm Hkv·hd]
// + final norm d + lm_head V·d (untied only).
int64_t LlamaConfig::num_parameters() const {
  const int64_t d = hidden_size, qd = num_attention_heads * head_dim, kvd = num_key_value_heads * head_dim;
  int64_t per_layer = 2 * d + d * qd + 2 * d * kvd + qd * d + 3 * d * intermediate_size;
  if (has_q_norm()) per_layer += qd;
  if (has_k_norm()) per_layer += kvd;
  int64_t n = vocab_size * d + num_hidden_layers * per_layer + d;
  if (!tie_word_embeddings) n += vocab_size * d;
  return n;
}

absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return Bad(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!j.is_object()) return Bad("top level must be a JSON object");

  LlamaConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || mt->is_null()) return Bad("missing required field model_type");
  if (!mt->is_string()) return Bad(absl::StrCat("model_type must be a string, got ", mt->dump()));
  c.model_type = mt->get<std::string>();

  auto at = j.find("attention_type");
  std::string attention;
  if (at != j.end() && !at->is_null()) {
    if (!at->is_string()) return Bad(absl::StrCat("attention_type must be a string, got ", at->dump()));
    attention = at->get<std::string>();
  }
  if (c.model_type == "llama") {
    if (!attention.empty() && attention != "rope")
      return Bad(absl::StrCat("attention_type \"", attention, "\" is not valid for model_type llama (use llama_drope)"));
    c.attention_type = AttentionType::kRope;
  } else if (c.model_type == "llama_drope") {
    if (attention.empty() || attention == "nope") c.attention_type = AttentionType::kNope;
    else if (attention == "qk_norm_nope") c.attention_type = AttentionType::kQkNormNope;
    else if (attention == "q_norm_nope") c.attention_type = AttentionType::kQNormNope;
    else if (attention == "k_norm_nope") c.attention_type = AttentionType::kKNormNope;
    else
      return Bad(absl::StrCat("unknown attention_type \"", attention,
                              "\" (expected nope, qk_norm_nope, q_norm_nope or k_norm_nope)"));
  } else {
    return Bad(absl::StrCat("unsupported model_type \"", c.model_type, "\" (expected llama or llama_drope)"));
  }

  auto assign = [](int64_t& dst, absl::StatusOr<int64_t> v) -> absl::Status {
    if (!v.ok()) return v.status();
    dst = *v;
    return absl::OkStatus();
  };
#define SINKSCOPE_CFG_TRY(expr)            \
  do {                                     \
    absl::Status _st = (expr);             \
    if (!_st.ok()) return _st;             \
  } while (0)
  SINKSCOPE_CFG_TRY(assign(c.vocab_size, GetInt(j, "vocab_size", true, 0)));
  SINKSCOPE_CFG_TRY(assign(c.hidden_size, GetInt(j, "hidden_size", true, 0)));
  SINKSCOPE_CFG_TRY(assign(c.intermediate_size, GetInt(j, "intermediate_size", true, 0)));
  SINKSCOPE_CFG_TRY(assign(c.num_hidden_layers, GetInt(j, "num_hidden_layers", true, 0)));
  SINKSCOPE_CFG_TRY(assign(c.num_attention_heads, GetInt(j, "num_attention_heads", true, 0)));
  SINKSCOPE_CFG_TRY(assign(c.max_position_embeddings, GetInt(j, "max_position_embeddings", true, 0)));

  for (auto [name, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                         {"hidden_size", c.hidden_size},
                         {"intermediate_size", c.intermediate_size},
                         {"num_hidden_layers", c.num_hidden_layers},
                         {"num_attention_heads", c.num_attention_heads},
                         {"max_position_embeddings", c.max_position_embeddings}}) {
    if (v <= 0) return Bad(absl::StrCat(name, " must be positive, got ", v));
  }
  SINKSCOPE_CFG_TRY(assign(c.num_key_value_heads, GetInt(j, "num_key_value_heads", false, c.num_attention_heads)));
  if (c.num_key_value_heads <= 0) return Bad(absl::StrCat("num_key_value_heads must be positive, got ", c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    return Bad(absl::StrCat("num_key_value_heads (", c.num_key_value_heads, ") does not divide num_attention_heads (",
                            c.num_attention_heads, ")"));
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    SINKSCOPE_CFG_TRY(assign(c.head_dim, GetInt(j, "head_dim", true, 0)));
    if (c.head_dim <= 0) return Bad(absl::StrCat("head_dim must be positive, got ", c.head_dim));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      return Bad(absl::StrCat("num_attention_heads (", c.num_attention_heads, ") does not divide hidden_size (",
                              c.hidden_size, ")"));
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.uses_rope() && c.head_dim % 2 != 0) return Bad(absl::StrCat("head_dim (", c.head_dim, ") must be even for rotary embeddings"));

  auto eps = GetNumber(j, "rms_norm_eps", 1e-6);
  if (!eps.ok()) return eps.status();
  c.rms_norm_eps = *eps;
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps))
    return Bad(absl::StrCat("rms_norm_eps must be a positive finite number, got ", c.rms_norm_eps));
  auto theta = GetNumber(j, "rope_theta", 10000.0);
  if (!theta.ok()) return theta.status();
  c.rope_theta = *theta;
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    return Bad(absl::StrCat("rope_theta must be a positive finite number, got ", c.rope_theta));

  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null())
    return Bad(absl::StrCat("rope_scaling is not supported (got ", it->dump(), "); only plain RoPE is implemented"));
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    auto b = GetBool(j, key, false);
    if (!b.ok()) return b.status();
    if (*b) return Bad(absl::StrCat(key, "=true is not supported (Llama projections have no bias)"));
  }
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    if (!it->is_string() || it->get<std::string>() != "silu")
      return Bad(absl::StrCat("hidden_act must be \"silu\", got ", it->dump()));
  }

  if (auto it = j.find("softmax_scale"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return Bad(absl::StrCat("softmax_scale must be a number, got ", it->dump()));
    double s = it->get<double>();
    if (!(s > 0) || !std::isfinite(s)) return Bad(absl::StrCat("softmax_scale must be positive and finite, got ", s));
    c.softmax_scale = s;
  }

  auto tie = GetBool(j, "tie_word_embeddings", false);
  if (!tie.ok()) return tie.status();
  c.tie_word_embeddings = *tie;

  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  for (const char* key : {"torch_dtype", "dtype"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_string()) return Bad(absl::StrCat(key, " must be a string, got ", it->dump()));
    std::string d = it->get<std::string>();
    if (d != "float32" && d != "float16" && d != "bfloat16")
      return Bad(absl::StrCat(key, " \"", d, "\" is not supported (expected float32, float16 or bfloat16)"));
    c.torch_dtype = d;
    break;
  }

  auto bos = GetTokenId(j, "bos_token_id", 1);
  if (!bos.ok()) return bos.status();
  c.bos_token_id = *bos;
  auto eos = GetTokenId(j, "eos_token_id", 2);
  if (!eos.ok()) return eos.status();
  c.eos_token_id = *eos;
  for (auto [name, v] : {std::pair<const char*, int64_t>{"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id}}) {
    if (v < -1 || v >= c.vocab_size)
      return Bad(absl::StrCat(name, " (", v, ") is outside [0, vocab_size=", c.vocab_size, ")"));
  }
#undef SINKSCOPE_CFG_TRY
  return c;
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  absl::StatusOr<std::string> text = util::ReadFile(path);
  if (!text.ok()) return text.status();
  auto cfg = ParseLlamaConfig(*text);
  if (!cfg.ok()) {
    absl::string_view msg = cfg.status().message();
    absl::ConsumePrefix(&msg, "config.json: ");
    return absl::Status(cfg.status().code(), absl::StrCat(path, ": ", msg));
  }
  return cfg;
}

}  // namespace sinkscope::model
