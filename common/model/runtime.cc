// Thin wrappers over ATen's parallel/context settings (see runtime.h).
#include "common/model/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <dlfcn.h>
#include <unistd.h>
#include <torch/csrc/api/include/torch/version.h>

#include <limits>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "absl/strings/str_cat.h"

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

absl::StatusOr<int64_t> DeviceMemoryBytes(const std::string& device) {
  at::Device dev(at::kCPU);
  try {
    dev = at::Device(device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": expected cpu, cuda or cuda:N"));
  }
  if (dev.is_cpu()) {
    const int64_t total = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    if (total <= 0) return absl::UnavailableError("cpu: cannot read the host's memory size");
    return total;
  }
  if (!dev.is_cuda()) return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": not cpu or cuda"));
  if (!at::hasCUDA()) return absl::FailedPreconditionError(absl::StrCat(device, ": this LibTorch has no CUDA"));
  // The CUDA runtime is loaded with libtorch_cuda; its entry points are looked up rather than linked, so that this
  // file builds against a CPU-only LibTorch too. Error codes: 0 = cudaSuccess.
  using GetDeviceFn = int (*)(int*);
  using SetDeviceFn = int (*)(int);
  using MemGetInfoFn = int (*)(size_t*, size_t*);
  auto get = reinterpret_cast<GetDeviceFn>(dlsym(RTLD_DEFAULT, "cudaGetDevice"));
  auto set = reinterpret_cast<SetDeviceFn>(dlsym(RTLD_DEFAULT, "cudaSetDevice"));
  auto info = reinterpret_cast<MemGetInfoFn>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  if (get == nullptr || set == nullptr || info == nullptr)
    return absl::UnavailableError(absl::StrCat(device, ": the CUDA runtime's cudaMemGetInfo is not loaded"));
  int previous = 0;
  if (get(&previous) != 0) return absl::UnavailableError(absl::StrCat(device, ": cudaGetDevice failed"));
  const int index = dev.has_index() ? dev.index() : previous;  // "cuda": the current device
  if (set(index) != 0) return absl::UnavailableError(absl::StrCat(device, ": cudaSetDevice failed"));
  size_t free_bytes = 0, total_bytes = 0;
  const int rc = info(&free_bytes, &total_bytes);
  set(previous);
  if (rc != 0) return absl::UnavailableError(absl::StrCat(device, ": cudaMemGetInfo failed (error ", rc, ")"));
  return static_cast<int64_t>(total_bytes);
}

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
