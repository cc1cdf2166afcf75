// sinkscope-train: weights and optimiser state on disk (training checkpoints, HF export tensors, --init-from).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/model/safetensors.h"
#include "common/util/status_macros.h"
#include "tools/train/trainer.h"

namespace sinkscope::train {
namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using model::LlamaConfig;
using model::LlamaWeights;

namespace {

std::string StDtypeOf(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    default: return "";
  }
}

TensorBytes ToBytes(const std::string& name, const at::Tensor& t_in, at::ScalarType dt) {
  at::Tensor t = t_in.detach().to(at::kCPU, dt).contiguous();
  TensorBytes tb;
  tb.name = name;
  tb.dtype = StDtypeOf(dt);
  tb.shape = t.sizes().vec();
  tb.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return tb;
}

}  // namespace

absl::StatusOr<std::vector<TensorBytes>> WeightsToTensorBytes(const LlamaWeights& w, const std::string& dtype) {
  at::ScalarType dt;
  if (dtype == "float32") dt = at::kFloat;
  else if (dtype == "bfloat16") dt = at::kBFloat16;
  else return absl::InvalidArgumentError(absl::StrCat("export dtype \"", dtype, "\" (expected float32 or bfloat16)"));
  std::vector<TensorBytes> out;
  for (const auto& [name, t] : NamedParams(w)) out.push_back(ToBytes(name, *t, dt));
  return out;
}

absl::Status Trainer::SaveCheckpoint(const std::string& dir) const {
  std::vector<TensorBytes> tensors;
  const auto params = NamedParams(w_);
  for (size_t i = 0; i < params.size(); ++i) {
    tensors.push_back(ToBytes("param/" + params[i].first, *params[i].second, at::kFloat));
    tensors.push_back(ToBytes("exp_avg/" + params[i].first, exp_avg_[i], at::kFloat));
    tensors.push_back(ToBytes("exp_avg_sq/" + params[i].first, exp_avg_sq_[i], at::kFloat));
  }
  std::vector<const TensorBytes*> ptrs;
  for (const auto& t : tensors) ptrs.push_back(&t);
  ojson state;
  state["format"] = "sinkscope-train checkpoint v1";
  state["step"] = step_;
  state["tokens_seen"] = tokens_seen_;
  state["elapsed_s"] = elapsed_s_;
  state["sampler_rng"] = sampler_->State();
  state["config"] = json::parse(HfConfigJson(cfg_));
  state["seed"] = opts_.seed;
  state["steps"] = opts_.steps;
  // Write into a fresh sibling directory, then swap it in, so a crash never leaves a half-written checkpoint.
  const fs::path final_dir(dir), tmp_dir = fs::path(dir).string() + ".tmp", old_dir = fs::path(dir).string() + ".old";
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  RETURN_IF_ERROR(WriteFileAtomic((tmp_dir / "state.safetensors").string(), SafetensorsBytes(ptrs, {})));
  RETURN_IF_ERROR(WriteFileAtomic((tmp_dir / "state.json").string(), state.dump(2) + "\n"));
  fs::remove_all(old_dir, ec);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move checkpoint into ", dir, ": ", ec.message()));
  fs::remove_all(old_dir, ec);
  return absl::OkStatus();
}

absl::Status Trainer::LoadCheckpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile((fs::path(dir) / "state.json").string()));
  json state;
  try {
    state = json::parse(text);
    ASSIGN_OR_RETURN(LlamaConfig c, model::ParseLlamaConfig(state.at("config").dump()));
    if (ShapeKey(c) != ShapeKey(cfg_) || c.attention_type != cfg_.attention_type)
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", dir, " is a ", ShapeKey(c), " ",
                                                        model::AttentionTypeName(c.attention_type), " model; this run is ",
                                                        ShapeKey(cfg_), " ",
                                                        model::AttentionTypeName(cfg_.attention_type)));
    ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open((fs::path(dir) / "state.safetensors").string()));
    auto params = NamedParams(w_);
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string& n = params[i].first;
      for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"param/", params[i].second},
                                 {"exp_avg/", &exp_avg_[i]}, {"exp_avg_sq/", &exp_avg_sq_[i]}}) {
        const model::StTensor* st = file->Find(prefix + n);
        if (st == nullptr) return absl::DataLossError(absl::StrCat(dir, ": checkpoint lacks ", prefix, n));
        at::Tensor v = model::CopyTensor(*st, at::kFloat);
        if (v.sizes() != dst->sizes())
          return absl::DataLossError(absl::StrCat(dir, ": ", prefix, n, " has the wrong shape"));
        dst->copy_(v);
      }
    }
    step_ = state.at("step").get<int64_t>();
    tokens_seen_ = state.at("tokens_seen").get<int64_t>();
    elapsed_s_ = state.at("elapsed_s").get<double>();
    RETURN_IF_ERROR(sampler_->SetState(state.at("sampler_rng").get<std::string>()));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<LlamaConfig, LlamaWeights>> LoadWeightsFrom(const std::string& dir) {
  try {
    if (fs::exists(fs::path(dir) / "state.json")) {  // a training checkpoint
      ASSIGN_OR_RETURN(std::string text, ReadFile((fs::path(dir) / "state.json").string()));
      ASSIGN_OR_RETURN(LlamaConfig cfg, model::ParseLlamaConfig(json::parse(text).at("config").dump()));
      ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open((fs::path(dir) / "state.safetensors").string()));
      LlamaWeights w = InitWeights(cfg, 0, 0.02);  // shapes only; every tensor is overwritten below
      for (auto& [n, p] : NamedParams(w)) {
        const model::StTensor* st = file->Find("param/" + n);
        if (st == nullptr) return absl::DataLossError(absl::StrCat(dir, ": checkpoint lacks param/", n));
        *p = model::CopyTensor(*st, at::kFloat);
      }
      return std::make_pair(cfg, std::move(w));
    }
    model::LoadOptions lo;
    lo.dtype = "float32";
    lo.compute_digest = false;
    ASSIGN_OR_RETURN(auto m, model::LlamaModel::Load(dir, lo));
    LlamaWeights w = m->weights();
    for (auto& [n, p] : NamedParams(w)) *p = p->detach().clone();  // own the memory (the model maps the file)
    return std::make_pair(m->config(), std::move(w));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading weights from ", dir, ": ", e.what()));
  }
}

}  // namespace sinkscope::train
