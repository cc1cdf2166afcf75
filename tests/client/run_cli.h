// Runs the built sinkscope binary (or any shell command) and captures its exit status, stdout and stderr.
#pragma once

#include <string>

namespace sinkscope::testing {

struct CliResult {
  int rc = -1;
  std::string out;
  std::string err;
};

// `sh -c "<command>"` with stdout and stderr captured separately (stdin from /dev/null).
CliResult Sh(const std::string& command);
// The sinkscope binary (SINKSCOPE_CLI_PATH) with `args` (a shell-quoted string).
CliResult Cli(const std::string& args);
// Shell-quotes one word.
std::string Quote(const std::string& s);
std::string ReadText(const std::string& path);

}  // namespace sinkscope::testing
