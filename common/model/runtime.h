// Torch-free runtime knobs for callers that must not include LibTorch headers (server, client-side tools).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace sinkscope::model {

// Sets LibTorch's intra-op thread count (torch::set_num_threads) and OpenBLAS's, when it is the BLAS. n <= 0: all
// hardware threads. Debian's LibTorch
// defaults to 1 thread on small VMs (docs/design-notes.md §5), so servers and benches should call this.
void SetComputeThreads(int n);
int ComputeThreads();  // torch::get_num_threads()
bool CudaAvailable();  // LibTorch built with CUDA and a device present

// CUDA devices this process sees (cudaGetDeviceCount of the CUDA runtime LibTorch loaded, looked up, so that this
// builds without CUDA headers), or why there are none: FailedPrecondition naming a CPU-only LibTorch, or the CUDA
// runtime's own error (a driver older than the runtime, no device, CUDA_VISIBLE_DEVICES hiding them).
absl::StatusOr<int> CudaDeviceCount();
// OK when tensors can be placed on `device` ("cpu", "cuda", "cuda:N") here; else why not: InvalidArgument for a name
// that is not cpu, cuda or cuda:N; FailedPrecondition as CudaDeviceCount, or for an index past the visible devices.
absl::Status CheckDevice(const std::string& device);

// Total memory of a device ("cpu", "cuda", "cuda:N"), in bytes: the host's physical memory for cpu; for cuda,
// cudaMemGetInfo's total of that device, looked up in the CUDA runtime LibTorch has loaded (no CUDA headers are
// needed to build this). Fails with a reason when the device cannot be asked.
absl::StatusOr<int64_t> DeviceMemoryBytes(const std::string& device);

// Process-wide glibc malloc settings for tensor workloads; call once, early in main(), before other threads start.
// Why: glibc serves every allocation >= 32 MiB with a fresh mmap and returns it with munmap on free, so each such
// tensor is page-faulted in again. On the project's VMs (Firecracker with free-page reporting) a fault costs ~13 µs
// per 4 KiB: a 32 MiB temporary then costs ~110 ms instead of ~4 ms (softmax over [4, 512, 4096] fp32: 121 ms ->
// 7 ms, measured). Settings: M_ARENA_MAX=1 (every thread allocates from the main, sbrk-grown arena, so the next
// two settings apply to LibTorch's worker threads too), M_MMAP_MAX=0 (no per-allocation mmaps), M_TRIM_THRESHOLD
// = 2 GiB, mallopt's maximum (freed memory stays in the process for reuse), M_TOP_PAD = 64 MiB. Trade-off: RSS stays at its
// high-water mark instead of shrinking after a large forward. The same can be had without code through
// GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647.
// Returns false if glibc rejected any setting (or on non-glibc platforms, where it does nothing).
bool TuneMallocForTensors();
std::string TorchVersion();  // e.g. "1.13.1"

}  // namespace sinkscope::model
