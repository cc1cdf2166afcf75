// LlamaModel: a loaded (or wrapped) model and its forward entry points; the forward itself is in llama.cc.
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/util/status_macros.h"

namespace sinkscope::model {

absl::StatusOr<ForwardResult> LlamaModel::Forward(const at::Tensor& ids, const ForwardOptions& opts) const {
  return LlamaForward(config_, weights_, ids, opts);
}

absl::StatusOr<ForwardResult> LlamaModel::Forward(const std::vector<int32_t>& ids, const ForwardOptions& opts) const {
  std::vector<int64_t> v(ids.begin(), ids.end());
  return Forward(at::tensor(v, at::TensorOptions().dtype(at::kLong)), opts);
}

absl::StatusOr<ForwardRun> LlamaModel::Begin(const std::vector<int32_t>& ids, ForwardOptions opts) const {
  std::vector<int64_t> v(ids.begin(), ids.end());
  return ForwardRun::Begin(config_, weights_, at::tensor(v, at::TensorOptions().dtype(at::kLong)), std::move(opts));
}

std::string LlamaModel::device() const { return weights_.embed_tokens.device().str(); }
std::string LlamaModel::dtype() const { return DtypeName(weights_.embed_tokens.scalar_type()); }

absl::StatusOr<std::shared_ptr<LlamaModel>> LlamaModel::FromWeights(const LlamaConfig& cfg, LlamaWeights weights,
                                                                      const std::string& name) {
  RETURN_IF_ERROR(ValidateWeights(cfg, weights));
  std::shared_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = cfg;
  m->weights_ = std::move(weights);
  m->dir_ = name;
  return m;
}

namespace {

// Bytes of the weights a config implies in the load dtype (0 when the config cannot be read).
int64_t NeededBytes(const std::string& model_dir, const LoadOptions& opts) {
  absl::StatusOr<LlamaConfig> cfg = LoadLlamaConfig(model_dir);
  absl::StatusOr<at::ScalarType> dtype = ParseDtype(opts.dtype);
  if (!cfg.ok() || !dtype.ok()) return 0;
  return cfg->num_parameters() * static_cast<int64_t>(c10::elementSize(*dtype));
}

}  // namespace

absl::StatusOr<std::shared_ptr<LlamaModel>> LlamaModel::Load(const std::string& model_dir, const LoadOptions& opts) {
  try {
    ASSIGN_OR_RETURN(LlamaConfig cfg, LoadLlamaConfig(model_dir));
    ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(opts.dtype));
    RETURN_IF_ERROR(CheckDevice(opts.device));  // a CPU-only LibTorch, no GPU, cuda:N past the visible ones
    const at::Device dev(opts.device);
    if (dtype == at::kHalf && dev.is_cpu())
      return absl::InvalidArgumentError(
          "dtype float16 is not supported on cpu (LibTorch 1.13 has no CPU Half matmul); use bfloat16 or float32");
    WeightsLoad how;
    how.dtype = dtype;
    how.device = dev;
    how.compute_digest = opts.compute_digest;
    how.check_finite = opts.check_finite;
    how.zero_copy = opts.zero_copy;
    ASSIGN_OR_RETURN(LoadedWeights lw, LoadWeights(model_dir, cfg, how));
    std::shared_ptr<LlamaModel> m(new LlamaModel());
    m->config_ = cfg;
    m->dir_ = model_dir;
    m->weights_ = std::move(lw.weights);
    m->digest_ = std::move(lw.digest);
    m->notes_ = std::move(lw.notes);
    return m;
  } catch (const c10::OutOfMemoryError& e) {
    // The weights do not fit on the device: say how much they need, so the operator can place the model elsewhere.
    const double gib = static_cast<double>(NeededBytes(model_dir, opts)) / (1 << 30);
    return absl::ResourceExhaustedError(absl::StrCat("loading ", model_dir, ": the weights (", absl::StrFormat("%.1f", gib),
                                                     " GiB in ", opts.dtype, ") do not fit on ", opts.device, ": ",
                                                     e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", model_dir, " failed in LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading ", model_dir, " failed: ", e.what()));
  }
}

}  // namespace sinkscope::model
