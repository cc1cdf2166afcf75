#include "server/registry.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/tokenizer/tokenizer.h"
#include "server/convert.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

Registry::Registry(std::vector<ModelConfig> models, const MemoryPolicy& memory) : memory_(memory) {
  absl::MutexLock l(&mu_);
  for (auto& mc : models) {
    Slot s;
    s.info.set_name(mc.name);
    s.info.set_description(mc.description);
    s.info.set_path(mc.path);
    s.info.set_dtype(mc.dtype);
    s.info.set_device(mc.device);
    s.info.set_state(v1::MODEL_STATE_LOADING);
    s.cfg = std::move(mc);
    slots_.push_back(std::move(s));
  }
}

std::shared_ptr<Registry> MakeRegistry(std::vector<ModelConfig> models, const MemoryPolicy& memory) {
  std::shared_ptr<Registry> r(new Registry(std::move(models), memory));
  r->weak_self_ = r;
  return r;
}

void Registry::StartLoading(std::chrono::seconds timeout) {
  std::shared_ptr<Registry> self = weak_self_.lock();  // MakeRegistry made this registry shared
  size_t n;
  {
    absl::MutexLock l(&mu_);
    n = slots_.size();
    timeout_ = timeout;
    deadline_ = std::chrono::steady_clock::now() + timeout;
  }
  for (size_t i = 0; i < n; ++i) std::thread(&Registry::Load, self, i).detach();
}

void Registry::Load(std::shared_ptr<Registry> self, size_t i) {
  ModelConfig cfg;
  {
    absl::MutexLock l(&self->mu_);
    cfg = self->slots_[i].cfg;
  }
  const auto t0 = std::chrono::steady_clock::now();
  model::LoadOptions opts;
  opts.device = cfg.device;
  opts.dtype = cfg.dtype;
  opts.compute_digest = cfg.digest;
  // Own the weights: a checkpoint truncated or rewritten while the server maps it would otherwise SIGBUS a job.
  opts.zero_copy = false;
  absl::StatusOr<std::shared_ptr<model::LlamaModel>> m = model::LlamaModel::Load(cfg.path, opts);
  // The tokenizer: an explicit path (a DroPE snapshot may ship only tokenizer.json), else tokenizer.model beside the
  // weights, else none (the model then serves token-id jobs only).
  std::shared_ptr<const tokenizer::Tokenizer> tok;
  absl::Status st = m.status();
  if (st.ok()) {
    const bool given = !cfg.tokenizer.empty();
    const std::string dir = given ? cfg.tokenizer : cfg.path;
    const bool is_file = given && !std::filesystem::is_directory(dir);
    absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>> t =
        is_file ? tokenizer::Tokenizer::Load(dir) : tokenizer::Tokenizer::LoadFromDir(dir);
    if (t.ok()) {
      tok = *t;
      if (tok->vocab_size() > (*m)->config().vocab_size)
        st = absl::FailedPreconditionError(absl::StrCat("tokenizer vocab ", tok->vocab_size(),
                                                        " exceeds model vocab_size ", (*m)->config().vocab_size));
    } else if (given || t.status().code() != absl::StatusCode::kNotFound) {
      st = t.status();  // an explicit tokenizer that fails, or a tokenizer.model that is there but broken
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t device_total = 0;
  if (st.ok()) {
    absl::StatusOr<int64_t> mem = model::DeviceMemoryBytes((*m)->device());
    if (mem.ok())
      device_total = *mem;
    else
      spdlog::warn("model {}: cannot size its memory budgets from the device: {}", cfg.name, mem.status().ToString());
  }
  absl::MutexLock l(&self->mu_);
  Slot& s = self->slots_[i];
  if (s.info.state() != v1::MODEL_STATE_LOADING) {  // timed out: the registry has moved on
    spdlog::warn("model {}: load finished after {:.1f} s, past its timeout; result dropped", cfg.name, secs);
    return;
  }
  if (!st.ok()) {
    s.info.set_state(v1::MODEL_STATE_FAILED);
    s.info.set_error(st.ToString());
    spdlog::error("model {}: load failed: {}", cfg.name, st.ToString());
    return;
  }
  ToProto(**m, tok.get(), &s.info);
  s.info.set_state(v1::MODEL_STATE_READY);
  s.handle = job::ModelHandle{cfg.name, *m, tok};
  s.device_total = device_total;
  self->SizeBudgetsLocked();
  constexpr double kGiB = 1 << 30;
  spdlog::info("model {}: ready ({} layers, {} params, {} on {}, {:.2f} s, weights {}; budgets per forward {:.2f} GiB, "
               "residual {:.2f} GiB{})", cfg.name, s.info.num_layers(), s.info.num_parameters(), s.info.dtype(),
               s.info.device(), secs, s.info.weights_digest().substr(0, 12), s.handle.forward_memory_bytes / kGiB,
               s.handle.residual_memory_bytes / kGiB, tok ? "" : ", no tokenizer: token-id jobs only");
}

void Registry::SizeBudgetsLocked() {
  for (Slot& s : slots_) {
    if (s.info.state() != v1::MODEL_STATE_READY) continue;
    int64_t resident = 0;  // weights of every ready model on the same device
    for (const Slot& o : slots_)
      if (o.info.state() == v1::MODEL_STATE_READY && o.info.device() == s.info.device())
        resident += o.info.weight_bytes();
    const int64_t left = std::max<int64_t>(0, s.device_total - resident);
    const bool known = s.device_total > 0;
    auto size = [&](bool automatic, double share, int64_t fixed, int64_t fallback) {
      if (!automatic) return fixed;
      return known ? static_cast<int64_t>(static_cast<double>(left) * share) : fallback;
    };
    s.handle.forward_memory_bytes =
        size(memory_.forward_auto, memory_.forward_share, memory_.forward_bytes, memory_.fallback_forward_bytes);
    s.handle.residual_memory_bytes =
        size(memory_.residual_auto, memory_.residual_share, memory_.residual_bytes, memory_.fallback_residual_bytes);
    s.info.set_forward_memory_bytes(s.handle.forward_memory_bytes);
    s.info.set_residual_memory_bytes(s.handle.residual_memory_bytes);
    s.info.set_device_memory_bytes(s.device_total);
  }
}

void Registry::ExpireLocked() const {
  if (std::chrono::steady_clock::now() < deadline_) return;
  for (Slot& s : slots_)
    if (s.info.state() == v1::MODEL_STATE_LOADING) {
      s.info.set_state(v1::MODEL_STATE_FAILED);
      s.info.set_error(absl::StrCat("DEADLINE_EXCEEDED: load timed out after ", timeout_.count(),
                                    " s (a stalled file system?); the other models serve"));
      spdlog::error("model {}: {}", s.info.name(), s.info.error());
    }
}

bool Registry::AllSettled() const {
  for (const Slot& s : slots_)
    if (s.info.state() == v1::MODEL_STATE_LOADING) return false;
  return true;
}

bool Registry::WaitLoaded(std::chrono::steady_clock::time_point until) {
  absl::MutexLock l(&mu_);
  for (;;) {
    ExpireLocked();
    if (AllSettled()) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) return false;
    // Wake at the earliest of: a load settles, the load deadline, the caller's deadline (or a 1 s tick).
    const auto wake = std::min({until, deadline_, now + std::chrono::seconds(1)});
    mu_.AwaitWithDeadline(absl::Condition(this, &Registry::AllSettled), absl::FromChrono(
        std::chrono::system_clock::now() + (wake - now)));
  }
}

bool Registry::loading_done() const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  return AllSettled();
}

int Registry::num_ready() const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  int n = 0;
  for (const auto& s : slots_) n += s.info.state() == v1::MODEL_STATE_READY;
  return n;
}

int Registry::num_failed() const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  int n = 0;
  for (const auto& s : slots_) n += s.info.state() == v1::MODEL_STATE_FAILED;
  return n;
}

std::vector<v1::ModelInfo> Registry::List() const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  std::vector<v1::ModelInfo> out;
  for (const auto& s : slots_) out.push_back(s.info);
  return out;
}

absl::StatusOr<v1::ModelInfo> Registry::Get(const std::string& name) const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  for (const auto& s : slots_)
    if (s.info.name() == name) return s.info;
  return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
}

absl::StatusOr<job::ModelHandle> Registry::Handle(const std::string& name) const {
  absl::MutexLock l(&mu_);
  ExpireLocked();
  for (const auto& s : slots_) {
    if (s.info.name() != name) continue;
    switch (s.info.state()) {
      case v1::MODEL_STATE_READY: return s.handle;
      case v1::MODEL_STATE_LOADING:
        return absl::FailedPreconditionError(absl::StrCat("model '", name, "' is still loading"));
      default:
        return absl::FailedPreconditionError(absl::StrCat("model '", name, "' failed to load: ", s.info.error()));
    }
  }
  return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
}

std::vector<std::string> Registry::Devices() const {
  absl::MutexLock l(&mu_);
  std::set<std::string> d = {"cpu"};
  for (const auto& s : slots_) d.insert(s.info.device());
  return {d.begin(), d.end()};
}

}  // namespace sinkscope::server
