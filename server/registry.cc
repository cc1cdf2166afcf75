#include "server/registry.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "server/convert.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

Registry::Registry(std::vector<ModelConfig> models) {
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

Registry::~Registry() {
  if (loader_.joinable()) loader_.join();
}

void Registry::StartLoading() { loader_ = std::thread([this] { LoadAll(); }); }

void Registry::LoadAll() {
  size_t n;
  {
    absl::MutexLock l(&mu_);
    n = slots_.size();
  }
  for (size_t i = 0; i < n; ++i) {
    ModelConfig cfg;
    {
      absl::MutexLock l(&mu_);
      cfg = slots_[i].cfg;
    }
    const auto t0 = std::chrono::steady_clock::now();
    model::LoadOptions opts;
    opts.device = cfg.device;
    opts.dtype = cfg.dtype;
    opts.compute_digest = cfg.digest;
    absl::StatusOr<std::shared_ptr<model::LlamaModel>> m = model::LlamaModel::Load(cfg.path, opts);
    absl::StatusOr<std::shared_ptr<const tokenizer::Tokenizer>> tok =
        m.ok() ? tokenizer::Tokenizer::LoadFromDir(cfg.path) : m.status();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    absl::MutexLock l(&mu_);
    Slot& s = slots_[i];
    if (!m.ok() || !tok.ok()) {
      const absl::Status st = !m.ok() ? m.status() : tok.status();
      s.info.set_state(v1::MODEL_STATE_FAILED);
      s.info.set_error(st.ToString());
      spdlog::error("model {}: load failed: {}", cfg.name, st.ToString());
      continue;
    }
    if ((*tok)->vocab_size() > (*m)->config().vocab_size) {
      s.info.set_state(v1::MODEL_STATE_FAILED);
      s.info.set_error(absl::StrCat("tokenizer vocab ", (*tok)->vocab_size(), " exceeds model vocab_size ",
                                    (*m)->config().vocab_size));
      spdlog::error("model {}: {}", cfg.name, s.info.error());
      continue;
    }
    ToProto(**m, **tok, &s.info);
    s.info.set_state(v1::MODEL_STATE_READY);
    s.handle = job::ModelHandle{cfg.name, *m, *tok};
    spdlog::info("model {}: ready ({} layers, {} params, {} on {}, {:.2f} s, weights {})", cfg.name,
                 s.info.num_layers(), s.info.num_parameters(), s.info.dtype(), s.info.device(), secs,
                 s.info.weights_digest().substr(0, 12));
  }
  absl::MutexLock l(&mu_);
  done_ = true;
}

void Registry::WaitLoaded() {
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(&done_));
}

bool Registry::loading_done() const {
  absl::MutexLock l(&mu_);
  return done_;
}

int Registry::num_ready() const {
  absl::MutexLock l(&mu_);
  int n = 0;
  for (const auto& s : slots_) n += s.info.state() == v1::MODEL_STATE_READY;
  return n;
}

std::vector<v1::ModelInfo> Registry::List() const {
  absl::MutexLock l(&mu_);
  std::vector<v1::ModelInfo> out;
  for (const auto& s : slots_) out.push_back(s.info);
  return out;
}

absl::StatusOr<v1::ModelInfo> Registry::Get(const std::string& name) const {
  absl::MutexLock l(&mu_);
  for (const auto& s : slots_)
    if (s.info.name() == name) return s.info;
  return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
}

absl::StatusOr<job::ModelHandle> Registry::Handle(const std::string& name) const {
  absl::MutexLock l(&mu_);
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
