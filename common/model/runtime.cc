// Thin wrappers over ATen's parallel/context settings (see runtime.h).
#include "common/model/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>

#include <thread>

namespace sinkscope::model {

void SetComputeThreads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

int ComputeThreads() { return at::get_num_threads(); }

bool CudaAvailable() { return at::hasCUDA(); }

std::string TorchVersion() { return TORCH_VERSION; }

}  // namespace sinkscope::model
