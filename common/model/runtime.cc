// Thin wrappers over ATen's parallel/context settings (see runtime.h).
#include "common/model/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
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
  // With Debian's OpenBLAS-pthread (docs/design-notes.md §4) BLAS keeps its own thread pool: size it alike, so that
  // sums are reduced the same way run after run (the trainer's determinism relies on it).
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(n);
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
