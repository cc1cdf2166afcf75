// Model registry: loads the configured models (engine) in the background and answers model queries.
// Holds engine handles only; never touches tensors.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/job/plan.h"
#include "server/config.h"
#include "sinkscope/v1/models.pb.h"

namespace sinkscope::server {

// Each model's memory budgets (job::ModelHandle, ModelInfo): a fixed number of bytes each, or (auto) a share of
// what the model's device leaves beside the weights of every READY model on it — device memory as
// model::DeviceMemoryBytes reads it (host memory for cpu). Re-sized whenever a model becomes ready. A device that
// cannot be asked gets `fallback_*`.
struct MemoryPolicy {
  bool forward_auto = true;
  bool residual_auto = true;
  double forward_share = 0.5;
  double residual_share = 0.25;
  int64_t forward_bytes = 0;           // when not auto (0 = no budget)
  int64_t residual_bytes = 0;          // when not auto (0 = one wave)
  int64_t fallback_forward_bytes = 0;  // auto, device unknown: no budget
  int64_t fallback_residual_bytes = int64_t{2} << 30;
};

class Registry {
 public:
  // Loads every model at once, each on its own thread (one slow file system does not hold the others back). A model
  // still loading after `timeout` is FAILED ("load timed out"); its thread is left to finish or hang on its own and
  // its late result is dropped.
  void StartLoading(std::chrono::seconds timeout);
  // Blocks until every model is READY or FAILED (a timed-out load counts as FAILED), or `until` passes. True when
  // loading is over.
  bool WaitLoaded(std::chrono::steady_clock::time_point until = std::chrono::steady_clock::time_point::max());
  bool loading_done() const;
  int num_ready() const;
  int num_failed() const;

  std::vector<sinkscope::v1::ModelInfo> List() const;
  absl::StatusOr<sinkscope::v1::ModelInfo> Get(const std::string& name) const;
  // NotFound for an unknown name, FailedPrecondition when not READY.
  absl::StatusOr<job::ModelHandle> Handle(const std::string& name) const;
  std::vector<std::string> Devices() const;

 private:
  // MakeRegistry: loading threads share the registry.
  Registry(std::vector<ModelConfig> models, const MemoryPolicy& memory);

  struct Slot {
    ModelConfig cfg;
    sinkscope::v1::ModelInfo info;
    job::ModelHandle handle;
    int64_t device_total = 0;  // bytes; 0 = unknown
  };
  // Loads slot i; runs on its own detached thread, which owns `self` so that a load outliving the registry (a
  // stalled read at shutdown) touches nothing freed.
  static void Load(std::shared_ptr<Registry> self, size_t i);
  // Marks loads past the deadline FAILED; called by every accessor, so no watchdog thread is needed.
  void ExpireLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AllSettled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets every READY model's budgets (handle and info) by the policy.
  void SizeBudgetsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  mutable std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);  // mutable: ExpireLocked from const accessors
  std::chrono::steady_clock::time_point deadline_ ABSL_GUARDED_BY(mu_) = std::chrono::steady_clock::time_point::max();
  std::chrono::seconds timeout_{0};
  const MemoryPolicy memory_;
  std::weak_ptr<Registry> weak_self_;
  friend std::shared_ptr<Registry> MakeRegistry(std::vector<ModelConfig> models, const MemoryPolicy& memory);
};

// Registries are shared with their loading threads.
std::shared_ptr<Registry> MakeRegistry(std::vector<ModelConfig> models, const MemoryPolicy& memory = {});

}  // namespace sinkscope::server
