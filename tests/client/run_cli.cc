#include "tests/client/run_cli.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace sinkscope::testing {

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

CliResult Sh(const std::string& command) {
  static std::atomic<int> n{0};
  const std::string base = std::filesystem::temp_directory_path().string() + "/sinkscope-cli-" +
                           std::to_string(getpid()) + "-" + std::to_string(n++);
  const std::string full = "( " + command + " ) </dev/null >" + base + ".out 2>" + base + ".err";
  CliResult r;
  const int st = std::system(full.c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = ReadText(base + ".out");
  r.err = ReadText(base + ".err");
  std::filesystem::remove(base + ".out");
  std::filesystem::remove(base + ".err");
  return r;
}

CliResult Cli(const std::string& args) { return Sh(std::string(SINKSCOPE_CLI_PATH) + " " + args); }

}  // namespace sinkscope::testing
