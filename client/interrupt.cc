#include "client/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <mutex>
#include <thread>

#include "client/exit_codes.h"

namespace sinkscope::client {
namespace {

std::mutex g_mu;
std::function<void(int)> g_handler;
int g_count = 0;

}  // namespace

void InstallInterruptHandling() {
  sigset_t set;
  sigemptyset(&set);
  // A SIGINT the parent ignores (a background job of a non-interactive shell) stays ignored.
  struct sigaction old {};
  if (sigaction(SIGINT, nullptr, &old) != 0 || old.sa_handler != SIG_IGN) sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0) continue;
      std::function<void(int)> h;
      int n;
      {
        std::lock_guard<std::mutex> lock(g_mu);
        h = g_handler;
        n = ++g_count;
      }
      if (h) {
        h(n);
      } else {
        // "\r\033[K": whatever progress line was drawn goes; then the conventional exit.
        if (isatty(STDERR_FILENO)) (void)!write(STDERR_FILENO, "\r\033[K", 4);
        (void)!write(STDERR_FILENO, "sinkscope: interrupted\n", 23);
        _exit(kExitCancelled);
      }
    }
  }).detach();
}

void SetInterruptHandler(std::function<void(int)> handler) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_handler = std::move(handler);
  g_count = 0;
}

void UnblockedSignalMask(void* sigset) { sigemptyset(static_cast<sigset_t*>(sigset)); }

}  // namespace sinkscope::client
