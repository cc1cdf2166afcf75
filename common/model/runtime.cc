// Thin wrappers over ATen's parallel/context settings (see runtime.h).
#include "common/model/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>

#include <limits>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace sinkscope::model {

void SetComputeThreads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

int ComputeThreads() { return at::get_num_threads(); }

bool CudaAvailable() { return at::hasCUDA(); }

std::string TorchVersion() { return TORCH_VERSION; }

bool TuneMallocForTensors() {
#if defined(__GLIBC__)
  bool ok = mallopt(M_ARENA_MAX, 1) == 1;
  ok &= mallopt(M_MMAP_MAX, 0) == 1;
  ok &= mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max()) == 1;  // ~2 GiB, mallopt's maximum
  ok &= mallopt(M_TOP_PAD, 64 << 20) == 1;
  return ok;
#else
  return false;
#endif
}

}  // namespace sinkscope::model
