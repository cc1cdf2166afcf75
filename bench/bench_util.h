// Small helpers shared by the benchmarks: --key=value flags, machine facts, timing statistics. Torch-free.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"

namespace sinkscope::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Parses --key=value flags over `defaults` (unknown keys are an error); --help lists the keys. Exits on bad input.
inline std::map<std::string, std::string> ParseFlags(int argc, char** argv, std::map<std::string, std::string> flags,
                                                     const char* usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << usage << " [--key=value ...]; keys and defaults:\n";
      for (const auto& [k, v] : flags) std::cout << "  --" << k << "=" << v << "\n";
      std::exit(0);
    }
    const auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos || !flags.count(a.substr(2, eq - 2))) {
      std::cerr << "unknown or malformed flag: " << a << " (see --help)\n";
      std::exit(2);
    }
    flags[a.substr(2, eq - 2)] = a.substr(eq + 1);
  }
  return flags;
}

inline int64_t IntFlag(std::map<std::string, std::string>& flags, const char* key) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(flags[key], &v)) {
    std::cerr << "--" << key << " must be an integer\n";
    std::exit(2);
  }
  return v;
}

inline std::string LoadAvg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// A "Key:  N kB" line of /proc/self/status (VmRSS:, VmHWM:), in kB; -1 if absent.
inline int64_t StatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key)));
  return -1;
}

// Resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
inline bool ResetPeakRss() {
  std::ofstream cr("/proc/self/clear_refs");
  cr << "5";
  cr.flush();
  return cr.good();
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace sinkscope::bench
