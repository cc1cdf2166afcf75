// Torch-free runtime knobs for callers that must not include LibTorch headers (server, client-side tools).
#pragma once

#include <string>

namespace sinkscope::model {

// Sets LibTorch's intra-op thread count (torch::set_num_threads). n <= 0: all hardware threads. Debian's LibTorch
// defaults to 1 thread on small VMs (toolchain.md §2 pitfall 4), so servers and benches should call this.
void SetComputeThreads(int n);
int ComputeThreads();  // torch::get_num_threads()
bool CudaAvailable();  // LibTorch built with CUDA and a device present
std::string TorchVersion();  // e.g. "1.13.1"

}  // namespace sinkscope::model
