// Thin wrappers over ATen's parallel/context settings (see runtime.h).
#include "common/model/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/Device.h>
#include <dlfcn.h>
#include <unistd.h>
#include <torch/csrc/api/include/torch/version.h>

#include <cstdlib>
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

namespace {

// An entry point of the CUDA runtime that libtorch_cuda loaded (null in a CPU-only LibTorch). Error codes: 0 =
// cudaSuccess.
template <class Fn>
Fn CudaRuntime(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

std::string CudaErrorText(int rc) {
  using ErrorStringFn = const char* (*)(int);
  auto text = CudaRuntime<ErrorStringFn>("cudaGetErrorString");
  const char* s = text != nullptr ? text(rc) : nullptr;
  return absl::StrCat("error ", rc, s != nullptr ? absl::StrCat(": ", s) : "");
}

std::string VisibleDevicesEnv() {
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  return v != nullptr ? absl::StrCat("CUDA_VISIBLE_DEVICES=\"", v, "\"") : "CUDA_VISIBLE_DEVICES unset";
}

}  // namespace

absl::StatusOr<int> CudaDeviceCount() {
  using CountFn = int (*)(int*);
  auto count = CudaRuntime<CountFn>("cudaGetDeviceCount");
  if (count == nullptr)
    return absl::FailedPreconditionError(absl::StrCat("this LibTorch (", TORCH_VERSION, ") was built without CUDA: ",
                                                      "build against a CUDA LibTorch (README, \"On a GPU node\")"));
  int n = 0;
  const int rc = count(&n);
  if (rc != 0)
    return absl::FailedPreconditionError(absl::StrCat("the CUDA runtime finds no usable GPU (cudaGetDeviceCount: ",
                                                      CudaErrorText(rc), "; ", VisibleDevicesEnv(), ")"));
  if (n == 0)
    return absl::FailedPreconditionError(absl::StrCat("no CUDA device is visible (", VisibleDevicesEnv(), ")"));
  if (!at::hasCUDA())  // a CUDA runtime in the process, but not LibTorch's
    return absl::FailedPreconditionError(absl::StrCat("this LibTorch (", TORCH_VERSION, ") cannot use CUDA"));
  return n;
}

absl::Status CheckDevice(const std::string& device) {
  at::Device dev(at::kCPU);
  try {
    dev = at::Device(device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": expected cpu, cuda or cuda:N"));
  }
  if (dev.is_cpu()) return absl::OkStatus();
  if (!dev.is_cuda()) return absl::InvalidArgumentError(absl::StrCat("device \"", device, "\": not cpu or cuda"));
  absl::StatusOr<int> n = CudaDeviceCount();
  if (!n.ok()) return absl::FailedPreconditionError(absl::StrCat(device, ": ", n.status().message()));
  if (dev.has_index() && dev.index() >= *n)
    return absl::FailedPreconditionError(absl::StrCat(device, ": only ", *n, " CUDA device", *n == 1 ? "" : "s",
                                                      " visible (cuda:0", *n > 1 ? absl::StrCat("..cuda:", *n - 1) : "",
                                                      "; ", VisibleDevicesEnv(), ")"));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> DeviceMemoryBytes(const std::string& device) {
  if (absl::Status st = CheckDevice(device); !st.ok()) return st;
  const at::Device dev(device);
  if (dev.is_cpu()) {
    const int64_t total = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    if (total <= 0) return absl::UnavailableError("cpu: cannot read the host's memory size");
    return total;
  }
  using GetDeviceFn = int (*)(int*);
  using SetDeviceFn = int (*)(int);
  using MemGetInfoFn = int (*)(size_t*, size_t*);
  auto get = CudaRuntime<GetDeviceFn>("cudaGetDevice");
  auto set = CudaRuntime<SetDeviceFn>("cudaSetDevice");
  auto info = CudaRuntime<MemGetInfoFn>("cudaMemGetInfo");
  if (get == nullptr || set == nullptr || info == nullptr)
    return absl::UnavailableError(absl::StrCat(device, ": the CUDA runtime's cudaMemGetInfo is not loaded"));
  int previous = 0;
  if (const int rc = get(&previous); rc != 0)
    return absl::UnavailableError(absl::StrCat(device, ": cudaGetDevice failed (", CudaErrorText(rc), ")"));
  const int index = dev.has_index() ? dev.index() : previous;  // "cuda": the current device
  if (const int rc = set(index); rc != 0)
    return absl::UnavailableError(absl::StrCat(device, ": cudaSetDevice failed (", CudaErrorText(rc), ")"));
  size_t free_bytes = 0, total_bytes = 0;
  const int rc = info(&free_bytes, &total_bytes);
  set(previous);
  if (rc != 0) return absl::UnavailableError(absl::StrCat(device, ": cudaMemGetInfo failed (", CudaErrorText(rc), ")"));
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
