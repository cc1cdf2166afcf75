// What a job runs on: loaded models (with their tokenizers) and the server's limits. Torch-free header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace sinkscope::model {
class LlamaModel;
}
namespace sinkscope::tokenizer {
class Tokenizer;
}

namespace sinkscope::job {

struct ModelHandle {
  std::string name;
  std::shared_ptr<const model::LlamaModel> model;
  // May be null for models used with token_ids inputs only (texts and datasets need it).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  // Memory budgets of this model's forwards, sized from its device by whoever loaded it (the server: the device's
  // memory less the weights resident there); -1 = RunLimits' forward_memory_bytes / residual_memory_bytes.
  int64_t forward_memory_bytes = -1;
  int64_t residual_memory_bytes = -1;
};

struct RunLimits {
  int32_t max_tokens_per_prompt = 4096;  // truncation length (BOS included) and upper bound of JobSpec.max_tokens
  int32_t max_prompts = 1000;            // prompts per job after Inputs.max_prompts
  std::string data_dir;                  // built-in dataset files (brown-heldout.txt)
  // Prompts are packed into forwards of at most this many tokens (block-diagonal attention: results are those of
  // one prompt per forward); a prompt longer than the budget runs alone. <= 1: one prompt per forward.
  int32_t pack_tokens = 4096;
  // Work caps, checked on the plan before a job is queued: tokens through all of a job's forwards (every model,
  // condition and control) and the forwards themselves.
  int64_t max_tokens_per_job = 20'000'000;
  int32_t max_planned_passes = 100'000;
  // Activation memory one forward may use (ForwardBytes in packing.h); packs are cut to fit and a prompt that can
  // never fit is refused. 0 = no budget.
  int64_t forward_memory_bytes = 0;
  // Residual-stream memory the layer-major baseline may hold (packing.h ResidualBytes): a wave is as many packed
  // forwards as fit, run through layer l before layer l+1 (layer results stream as each layer is final); what is
  // left keeps the clean residual entering the layers where interventions start (prefix reuse). 0 = no budget
  // (one wave, every residual an intervention can reuse kept). 2 GiB suits a CPU host; the server sizes it from
  // each model's device (ModelHandle.residual_memory_bytes).
  int64_t residual_memory_bytes = int64_t{2} << 30;
  // Matrix entropy's spectra are solved on the host. kAuto: for a model on a GPU on a background thread while the
  // device computes the next layers (a layer's result then streams a layer later); for a CPU model at once, its
  // cores being busy with the forward. kBackground / kAtOnce force either (tests check that they agree).
  enum class HostWork { kAuto, kBackground, kAtOnce };
  HostWork host_work = HostWork::kAuto;
  // How a packed forward batches the attention of prompts of different lengths (model::AttentionBatching). kAuto:
  // padded groups for a model on a GPU, where a batch's kernel launches cost more than padding's few extra FLOPs;
  // equal-length runs on a CPU, whose cores would compute the padding. The others force either.
  enum class Attention { kAuto, kEqualLength, kPadded };
  Attention attention = Attention::kAuto;
};

// The budgets that apply to `h`: its own when set (>= 0), else the limits'.
inline int64_t ForwardMemoryBudget(const ModelHandle& h, const RunLimits& l) {
  return h.forward_memory_bytes >= 0 ? h.forward_memory_bytes : l.forward_memory_bytes;
}
inline int64_t ResidualMemoryBudget(const ModelHandle& h, const RunLimits& l) {
  return h.residual_memory_bytes >= 0 ? h.residual_memory_bytes : l.residual_memory_bytes;
}

}  // namespace sinkscope::job
