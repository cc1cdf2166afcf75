// Llama weights as plain tensors, and the ONE table of Hugging Face tensor names that the loader, the exporter
// (tools/train) and the weight checks share. Loading = config.json + safetensors (mmap) → LlamaWeights on a device
// in a compute dtype; the forward (llama.h) only ever sees LlamaWeights.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/config.h"

namespace sinkscope::model {

struct StTensor;

// q_norm/k_norm are undefined unless the attention type needs them.
struct LayerWeights {
  at::Tensor input_layernorm, q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
  at::Tensor post_attention_layernorm, gate_proj, up_proj, down_proj;
};
struct LlamaWeights {
  at::Tensor embed_tokens;  // [V, d]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [d]
  at::Tensor lm_head;  // [V, d] (== embed_tokens when tied)
};

// One tensor of a checkpoint, bound to its field in a LlamaWeights.
struct TensorSlot {
  std::string name;                  // HF name, e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<std::string> aliases;  // other names accepted when loading (e.g. "...q_layernorm.weight")
  std::vector<int64_t> shape;        // implied by config.json
  at::Tensor* tensor = nullptr;      // the field in the weights the table was built over
};

// Calls fn(HF name, tensor) for every defined tensor of `w`, in HF export order (a tied lm_head is skipped).
void ForEachTensor(LlamaWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn);

// Every tensor `cfg` implies, in HF export order (embed, layers in HF order, norm, lm_head), bound to `w` (whose
// layers are resized to the config's). lm_head is left out when the embeddings are tied.
std::vector<TensorSlot> TensorTable(const LlamaConfig& cfg, LlamaWeights* w);

// Checks that `w` has every tensor `cfg` needs with the expected shapes, all of one floating dtype on one device.
// InvalidArgument naming the tensor otherwise.
absl::Status ValidateWeights(const LlamaConfig& cfg, const LlamaWeights& w);

// Bytes held by the weight tensors (a tied lm_head counts once).
int64_t WeightBytes(const LlamaWeights& w);

struct LoadedWeights {
  LlamaWeights weights;
  std::string digest;              // SHA-256 over the safetensors files' bytes (empty unless asked for)
  std::vector<std::string> notes;  // ignored tensors, tied lm_head, ...
};

// Reads <dir>'s safetensors (single or sharded) for `cfg` into `dtype` on `device`. Zero-copy (the tensors alias
// the file mapping) when the checkpoint dtype is the compute dtype on the CPU; converted otherwise. Errors name
// the file and the tensor (NotFound for a missing tensor, InvalidArgument for a wrong shape or dtype).
// Also refused: tensors of layers the config does not declare (a config that under-declares num_hidden_layers would
// otherwise serve a truncated model), and, with check_finite, any NaN/Inf weight (named). zero_copy=false copies
// CPU weights out of the mapping (see LoadOptions in llama.h).
struct WeightsLoad {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  bool compute_digest = true;
  bool check_finite = true;
  bool zero_copy = true;
};
absl::StatusOr<LoadedWeights> LoadWeights(const std::string& dir, const LlamaConfig& cfg, const WeightsLoad& how);

// An owned copy of a checkpoint tensor, converted to `dtype` on the CPU (for tools that outlive the file mapping).
at::Tensor CopyTensor(const StTensor& t, at::ScalarType dtype);

// "float32" | "bfloat16" | "float16" (aliases fp32, float, bf16, fp16, half); InvalidArgument otherwise.
absl::StatusOr<at::ScalarType> ParseDtype(const std::string& s);
std::string DtypeName(at::ScalarType t);  // "float32", "bfloat16", "float16", "float64", ...
std::string ShapeStr(at::IntArrayRef s);  // "[4096, 32000]", for error messages

}  // namespace sinkscope::model
