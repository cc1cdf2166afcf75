// What every engine bench result records about the machine, and where it writes: <dir>/<name>.json and .md.
// Torch-free (runtime.h declares plain functions).
#pragma once

#include <sys/utsname.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/model/runtime.h"
#include "nlohmann/json.hpp"

namespace sinkscope::bench {

struct Machine {
  nlohmann::json json;  // cpu, kernel, threads, torch, load averages
  std::string line;     // "Machine: ... Load average before: ..., after: ...\n\n" for the markdown report
};

inline Machine DescribeMachine(const std::string& load_before) {
  utsname un{};
  uname(&un);
  const std::string load_after = LoadAvg();
  Machine m;
  m.json = {{"cpu", CpuModel()},
            {"kernel", un.release},
            {"threads", model::ComputeThreads()},
            {"torch", model::TorchVersion()},
            {"loadavg_before", load_before},
            {"loadavg_after", load_after}};
  m.line = absl::StrFormat("Machine: %s, %d torch threads, LibTorch %s, Linux %s. Load average before: %s, after: %s.\n\n",
                           CpuModel(), model::ComputeThreads(), model::TorchVersion(), un.release, load_before,
                           load_after);
  return m;
}

// Writes `json` to <dir>/<name>.json and returns the open <dir>/<name>.md.
inline std::ofstream OpenReport(const std::string& dir, const std::string& name, const nlohmann::json& json) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + name + ".json") << json.dump(2) << "\n";
  return std::ofstream(dir + "/" + name + ".md");
}

}  // namespace sinkscope::bench
