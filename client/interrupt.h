// Ctrl-C (SIGINT) and SIGTERM for a multi-threaded gRPC client: both are blocked in every thread from the start of
// main (before gRPC starts any thread, so none of them can take the default action) and received by one thread
// with sigwait. A command installs what an interrupt means for it (run: cancel the job; batch: cancel what it
// submitted); without one, an interrupt clears the line and exits with kExitCancelled.
#pragma once

#include <functional>

namespace sinkscope::client {

// Call first thing in main. Starts the receiving thread.
void InstallInterruptHandling();
// `handler(n)` runs on the receiving thread for the n-th interrupt (1, 2, ...); empty = the default (exit).
void SetInterruptHandler(std::function<void(int)> handler);
// Child processes (gnuplot) should start with no blocked signals: the mask to pass to posix_spawn.
void UnblockedSignalMask(void* sigset);

}  // namespace sinkscope::client
