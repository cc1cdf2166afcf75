// The HF tensor-name table, weight checks and checkpoint loading (see weights.h).
#include "common/model/weights.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/model/safetensors.h"
#include "common/util/status_macros.h"

namespace sinkscope::model {
namespace {

// The per-layer tensors of a Llama decoder layer, in HF order. Shapes are in units of the config (below); `need`
// says when the config implies the tensor.
enum class Dim { kD, kQ, kKv, kI };  // hidden, heads·head_dim, kv_heads·head_dim, intermediate
enum class Need { kAlways, kQNorm, kKNorm };
struct LayerTensor {
  const char* suffix;  // after "model.layers.{l}."
  const char* alias;   // accepted alternative when loading, or nullptr
  at::Tensor LayerWeights::*field;
  std::vector<Dim> shape;
  Need need;
};
// SakanaAI's DroPE writes nn.RMSNorm(H·hd) as self_attn.q_norm and nn.RMSNorm(Hkv·hd) as self_attn.k_norm; some
// exports call them q_layernorm / k_layernorm.
const std::vector<LayerTensor>& LayerTensors() {
  static const std::vector<LayerTensor> t = {
      {"input_layernorm.weight", nullptr, &LayerWeights::input_layernorm, {Dim::kD}, Need::kAlways},
      {"self_attn.q_proj.weight", nullptr, &LayerWeights::q_proj, {Dim::kQ, Dim::kD}, Need::kAlways},
      {"self_attn.k_proj.weight", nullptr, &LayerWeights::k_proj, {Dim::kKv, Dim::kD}, Need::kAlways},
      {"self_attn.v_proj.weight", nullptr, &LayerWeights::v_proj, {Dim::kKv, Dim::kD}, Need::kAlways},
      {"self_attn.o_proj.weight", nullptr, &LayerWeights::o_proj, {Dim::kD, Dim::kQ}, Need::kAlways},
      {"self_attn.q_norm.weight", "self_attn.q_layernorm.weight", &LayerWeights::q_norm, {Dim::kQ}, Need::kQNorm},
      {"self_attn.k_norm.weight", "self_attn.k_layernorm.weight", &LayerWeights::k_norm, {Dim::kKv}, Need::kKNorm},
      {"post_attention_layernorm.weight", nullptr, &LayerWeights::post_attention_layernorm, {Dim::kD}, Need::kAlways},
      {"mlp.gate_proj.weight", nullptr, &LayerWeights::gate_proj, {Dim::kI, Dim::kD}, Need::kAlways},
      {"mlp.up_proj.weight", nullptr, &LayerWeights::up_proj, {Dim::kI, Dim::kD}, Need::kAlways},
      {"mlp.down_proj.weight", nullptr, &LayerWeights::down_proj, {Dim::kD, Dim::kI}, Need::kAlways},
  };
  return t;
}

bool Needed(Need n, const LlamaConfig& c) {
  switch (n) {
    case Need::kAlways: return true;
    case Need::kQNorm: return c.has_q_norm();
    case Need::kKNorm: return c.has_k_norm();
  }
  return true;
}

std::vector<int64_t> Shape(const std::vector<Dim>& dims, const LlamaConfig& c) {
  std::vector<int64_t> s;
  for (Dim d : dims) {
    switch (d) {
      case Dim::kD: s.push_back(c.hidden_size); break;
      case Dim::kQ: s.push_back(c.num_attention_heads * c.head_dim); break;
      case Dim::kKv: s.push_back(c.num_key_value_heads * c.head_dim); break;
      case Dim::kI: s.push_back(c.intermediate_size); break;
    }
  }
  return s;
}

std::string LayerPrefix(size_t l) { return absl::StrCat("model.layers.", l, "."); }

at::ScalarType ToScalarType(StDtype d) {
  switch (d) {
    case StDtype::kF16: return at::kHalf;
    case StDtype::kBF16: return at::kBFloat16;
    default: return at::kFloat;
  }
}

// Wraps a checkpoint tensor. Zero-copy (at::from_blob over the mapping, whose lifetime the deleter extends) when the
// checkpoint dtype is the compute dtype, the device is the CPU and the pointer is aligned; otherwise converts.
at::Tensor WrapTensor(const StTensor& t, std::shared_ptr<SafetensorsFile> file, at::ScalarType dtype,
                      const at::Device& dev, bool zero_copy) {
  const at::ScalarType src = ToScalarType(t.dtype);
  void* data = const_cast<uint8_t*>(t.data);
  // A data section at an odd offset cannot be viewed as 2- or 4-byte elements: copy it out first.
  const bool aligned = reinterpret_cast<uintptr_t>(data) % t.elem_size == 0;
  at::Tensor base;
  if (aligned) {
    base = at::from_blob(data, t.shape, [file](void*) {}, at::TensorOptions().dtype(src));
  } else {
    base = at::empty(t.shape, at::TensorOptions().dtype(src));
    std::memcpy(base.data_ptr(), data, t.nbytes());
  }
  if (src == dtype && dev.is_cpu() && (zero_copy || !aligned)) return base;  // (unaligned: already a copy)
  return base.to(dev, dtype, /*non_blocking=*/false, /*copy=*/true);
}

// Layers beyond num_hidden_layers in the checkpoint: the config and the weights disagree.
absl::Status CheckNoExtraLayers(const SafetensorsCheckpoint& ck, const LlamaConfig& cfg, const std::string& dir) {
  constexpr std::string_view kPrefix = "model.layers.";
  for (const std::string& n : ck.names()) {
    if (n.rfind(kPrefix, 0) != 0) continue;
    const size_t dot = n.find('.', kPrefix.size());
    int64_t layer = -1;
    if (dot == std::string::npos || !absl::SimpleAtoi(n.substr(kPrefix.size(), dot - kPrefix.size()), &layer)) continue;
    if (layer >= cfg.num_hidden_layers)
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor ", n, " belongs to layer ", layer,
                                                     " but config.json declares num_hidden_layers=",
                                                     cfg.num_hidden_layers, " (the model would be served truncated)"));
  }
  return absl::OkStatus();
}

// NaN/Inf weights would make every job report numbers derived from NaN (sink rates of 0.0): refuse them by name.
absl::Status CheckFinite(const at::Tensor& t, const std::string& file, const std::string& name) {
  const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
  if (bad == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": tensor ", name, " has ", bad, " non-finite value(s) (NaN or Inf) of ", t.numel()));
}

}  // namespace

at::Tensor CopyTensor(const StTensor& t, at::ScalarType dtype) {
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(ToScalarType(t.dtype)));
  std::memcpy(out.data_ptr(), t.data, t.nbytes());
  return out.to(dtype);
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& s) {
  if (s == "float32" || s == "fp32" || s == "float") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  if (s == "float16" || s == "fp16" || s == "half") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", s, "\" is not supported (expected float32, bfloat16 or float16)"));
}

std::string ShapeStr(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

std::string DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return std::string(c10::toString(t));
  }
}

void ForEachTensor(LlamaWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn) {
  if (w.embed_tokens.defined()) fn("model.embed_tokens.weight", w.embed_tokens);
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (const LayerTensor& lt : LayerTensors()) {
      at::Tensor& t = w.layers[l].*lt.field;
      if (t.defined()) fn(LayerPrefix(l) + lt.suffix, t);
    }
  if (w.norm.defined()) fn("model.norm.weight", w.norm);
  if (w.lm_head.defined() && !w.lm_head.is_same(w.embed_tokens)) fn("lm_head.weight", w.lm_head);
}

std::vector<TensorSlot> TensorTable(const LlamaConfig& c, LlamaWeights* w) {
  const int64_t d = c.hidden_size, V = c.vocab_size;
  w->layers.resize(c.num_hidden_layers);
  std::vector<TensorSlot> t;
  t.push_back({"model.embed_tokens.weight", {}, {V, d}, &w->embed_tokens});
  for (size_t l = 0; l < w->layers.size(); ++l)
    for (const LayerTensor& lt : LayerTensors()) {
      if (!Needed(lt.need, c)) continue;
      TensorSlot s{LayerPrefix(l) + lt.suffix, {}, Shape(lt.shape, c), &(w->layers[l].*lt.field)};
      if (lt.alias != nullptr) s.aliases.push_back(LayerPrefix(l) + lt.alias);
      t.push_back(std::move(s));
    }
  t.push_back({"model.norm.weight", {}, {d}, &w->norm});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {}, {V, d}, &w->lm_head});
  return t;
}

absl::Status ValidateWeights(const LlamaConfig& cfg, const LlamaWeights& w_in) {
  if (!w_in.embed_tokens.defined()) return absl::InvalidArgumentError("weights: embed_tokens is undefined");
  const at::ScalarType dt = w_in.embed_tokens.scalar_type();
  const at::Device dev = w_in.embed_tokens.device();
  if (!at::isFloatingType(dt))
    return absl::InvalidArgumentError(absl::StrCat("weights: embed_tokens has non-floating dtype ", DtypeName(dt)));
  if (static_cast<int64_t>(w_in.layers.size()) != cfg.num_hidden_layers)
    return absl::InvalidArgumentError(absl::StrCat("weights: ", w_in.layers.size(),
                                                   " layers, config num_hidden_layers=", cfg.num_hidden_layers));
  LlamaWeights w = w_in;  // tensors are shared handles: the table binds to this copy's fields, no data is copied
  std::vector<TensorSlot> table = TensorTable(cfg, &w);
  if (cfg.tie_word_embeddings) table.push_back({"lm_head.weight", {}, {cfg.vocab_size, cfg.hidden_size}, &w.lm_head});
  for (const TensorSlot& s : table) {
    const at::Tensor& t = *s.tensor;
    if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("weights: ", s.name, " is undefined"));
    if (t.sizes() != at::IntArrayRef(s.shape))
      return absl::InvalidArgumentError(absl::StrCat("weights: ", s.name, " has shape ", ShapeStr(t.sizes()),
                                                     ", expected ", ShapeStr(s.shape)));
    if (t.scalar_type() != dt || t.device() != dev)
      return absl::InvalidArgumentError(absl::StrCat("weights: ", s.name, " is ", DtypeName(t.scalar_type()), " on ",
                                                     t.device().str(), ", expected ", DtypeName(dt), " on ", dev.str()));
  }
  return absl::OkStatus();
}

int64_t WeightBytes(const LlamaWeights& w_in) {
  LlamaWeights w = w_in;
  int64_t n = 0;
  ForEachTensor(w, [&](const std::string&, at::Tensor& t) { n += t.numel() * static_cast<int64_t>(t.element_size()); });
  return n;
}

absl::StatusOr<LoadedWeights> LoadWeights(const std::string& dir, const LlamaConfig& cfg, const WeightsLoad& how) {
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsCheckpoint> ck, SafetensorsCheckpoint::Open(dir));
  RETURN_IF_ERROR(CheckNoExtraLayers(*ck, cfg, dir));
  LoadedWeights out;
  std::set<std::string> used;
  auto where = [&](const std::string& name) {
    auto f = ck->FileOf(name);
    return f ? f->path() : (ck->sharded() ? dir + "/model.safetensors.index.json" : dir + "/model.safetensors");
  };
  for (const TensorSlot& s : TensorTable(cfg, &out.weights)) {
    std::vector<std::string> names = {s.name};
    names.insert(names.end(), s.aliases.begin(), s.aliases.end());
    const StTensor* t = nullptr;
    std::string name;
    for (const std::string& n : names)
      if ((t = ck->Find(n)) != nullptr) {
        name = n;
        break;
      }
    if (t == nullptr)
      return absl::NotFoundError(absl::StrCat(where(s.name), ": missing tensor ", absl::StrJoin(names, " or "),
                                              " (model_type ", cfg.model_type, ", attention_type ",
                                              AttentionTypeName(cfg.attention_type), ")"));
    used.insert(name);
    if (t->dtype == StDtype::kUnsupported)
      return absl::InvalidArgumentError(absl::StrCat(where(name), ": tensor ", name, " has dtype ", t->dtype_str,
                                                     "; only F32, F16 and BF16 weights are supported"));
    if (t->shape != s.shape)
      return absl::InvalidArgumentError(absl::StrCat(where(name), ": tensor ", name, " has shape ", ShapeStr(t->shape),
                                                     ", config.json implies ", ShapeStr(s.shape)));
    *s.tensor = WrapTensor(*t, ck->FileOf(name), how.dtype, how.device, how.zero_copy);
    if (how.check_finite) RETURN_IF_ERROR(CheckFinite(*s.tensor, where(name), name));
  }
  LlamaWeights& w = out.weights;
  if (cfg.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    if (ck->Find("lm_head.weight") != nullptr) {
      used.insert("lm_head.weight");
      out.notes.push_back("lm_head.weight present but tie_word_embeddings=true: using model.embed_tokens.weight");
    }
  }
  for (const std::string& n : ck->names())
    if (!used.count(n)) out.notes.push_back(absl::StrCat("ignored unexpected tensor ", n, " (", ck->FileOf(n)->path(), ")"));
  if (how.compute_digest) out.digest = ck->Sha256Hex();
  if (!out.notes.empty()) spdlog::info("loaded {} with {} note(s); first: {}", dir, out.notes.size(), out.notes.front());
  return out;
}

}  // namespace sinkscope::model
