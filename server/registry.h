// Model registry: loads the configured models (engine) in the background and answers model queries.
// Holds engine handles only; never touches tensors.
#pragma once

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

class Registry {
 public:
  explicit Registry(std::vector<ModelConfig> models);
  ~Registry();

  // Loads every model on a background thread, in config order.
  void StartLoading();
  // Blocks until every model is READY or FAILED.
  void WaitLoaded();
  bool loading_done() const;
  int num_ready() const;

  std::vector<sinkscope::v1::ModelInfo> List() const;
  absl::StatusOr<sinkscope::v1::ModelInfo> Get(const std::string& name) const;
  // NotFound for an unknown name, FailedPrecondition when not READY.
  absl::StatusOr<job::ModelHandle> Handle(const std::string& name) const;
  std::vector<std::string> Devices() const;

 private:
  struct Slot {
    ModelConfig cfg;
    sinkscope::v1::ModelInfo info;
    job::ModelHandle handle;
  };
  void LoadAll();

  mutable absl::Mutex mu_;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread loader_;
};

}  // namespace sinkscope::server
