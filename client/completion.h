// Bash completion for sinkscope, generated from the command line's own declaration (so it never goes stale):
//   source <(sinkscope completion bash)       or      sinkscope completion bash > /etc/bash_completion.d/sinkscope
// Completes subcommands, every option of the subcommand typed (global options included), format names, model and
// dataset names (asked of the server), files and directories where an option takes one.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace sinkscope::client {

std::string BashCompletion(CLI::App& app);

}  // namespace sinkscope::client
