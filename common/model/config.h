// Llama-family model configuration, read from a Hugging Face config.json.
// Supports model_type "llama" (RoPE) and SakanaAI DroPE's "llama_drope" (attention_type nope / qk_norm_nope /
// q_norm_nope / k_norm_nope, optional softmax_scale). See docs/study.md §2.3–§2.5.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace sinkscope::model {

enum class AttentionType {
  kRope,        // model_type llama: rotary embeddings (HF rotate_half convention)
  kNope,        // llama_drope / nope: q,k enter attention exactly as projected
  kQkNormNope,  // RMSNorm over the full num_heads*head_dim q and k projections, then NoPE
  kQNormNope,   // RMSNorm on q only, then NoPE
  kKNormNope,   // RMSNorm on k only, then NoPE
};

const char* AttentionTypeName(AttentionType t);  // "rope", "nope", "qk_norm_nope", ...

struct LlamaConfig {
  std::string model_type;  // "llama" or "llama_drope"
  AttentionType attention_type = AttentionType::kRope;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // == num_attention_heads when absent (MHA); divides it (GQA)
  int64_t head_dim = 0;             // config "head_dim" or hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<double> softmax_scale;  // DroPE override of 1/sqrt(head_dim)
  bool tie_word_embeddings = false;
  std::string torch_dtype;  // "float32" | "float16" | "bfloat16" (checkpoint dtype, informational)
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;

  bool uses_rope() const { return attention_type == AttentionType::kRope; }
  bool has_q_norm() const {
    return attention_type == AttentionType::kQkNormNope || attention_type == AttentionType::kQNormNope;
  }
  bool has_k_norm() const {
    return attention_type == AttentionType::kQkNormNope || attention_type == AttentionType::kKNormNope;
  }
  double attention_scale() const;  // softmax_scale if set, else head_dim^-0.5
  int64_t num_parameters() const;  // total parameter count implied by the config
};

// Parses config.json text. Errors (InvalidArgument) name the offending field, e.g.
// "config.json: num_attention_heads (7) does not divide hidden_size (64)".
absl::StatusOr<LlamaConfig> ParseLlamaConfig(const std::string& json_text);
// Reads <dir>/config.json.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& model_dir);

}  // namespace sinkscope::model
