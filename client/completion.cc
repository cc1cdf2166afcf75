#include "client/completion.h"

#include <CLI/CLI.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkscope::client {
namespace {

// Every name of an option ("-m", "--model"); `values` collects those that take a value.
std::vector<std::string> OptionNames(const CLI::App& app, std::set<std::string>* values) {
  std::vector<std::string> out;
  auto add = [&](const CLI::Option* o) {
    if (o->get_positional() && o->get_lnames().empty() && o->get_snames().empty()) return;
    std::vector<std::string> names;
    for (const auto& s : o->get_snames()) names.push_back("-" + s);
    for (const auto& l : o->get_lnames()) names.push_back("--" + l);
    for (const auto& n : names) {
      out.push_back(n);
      if (o->get_type_size() != 0) values->insert(n);
    }
  };
  for (const CLI::Option* o : app.get_options()) add(o);
  for (const CLI::App* g : app.get_subcommands([](const CLI::App* s) { return s->get_name().empty(); }))
    for (const CLI::Option* o : g->get_options()) add(o);  // option groups are nameless subcommands
  return out;
}

}  // namespace

std::string BashCompletion(CLI::App& app) {
  std::set<std::string> values;
  const std::vector<std::string> global = OptionNames(app, &values);
  std::vector<std::string> cmds;
  std::string cases;
  for (CLI::App* sub : app.get_subcommands([](const CLI::App* s) { return !s->get_name().empty(); })) {
    cmds.push_back(sub->get_name());
    absl::StrAppend(&cases, "    ", sub->get_name(), ") opts=\"", absl::StrJoin(OptionNames(*sub, &values), " "),
                    " --help\";;\n");
  }
  values.erase("--help");
  std::set<std::string> special = {"-f",        "--format", "-m",           "--model",      "-d",
                                   "--dataset", "--spec",   "--texts-file", "--token-file", "--tls-ca",
                                   "--save",    "--out",    "--plot"};
  std::vector<std::string> plain;
  for (const auto& v : values)
    if (!special.count(v)) plain.push_back(v);
  return absl::StrCat(R"SH(# bash completion for sinkscope. Install: source <(sinkscope completion bash)
_sinkscope_names() {  # the server's model or dataset names (first CSV column), for -m and -d
  "${COMP_WORDS[0]}" -q -f csv "$1" 2>/dev/null | tail -n +2 | cut -d, -f1
}
_sinkscope() {
  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
  local cmds=")SH",
                      absl::StrJoin(cmds, " "), R"SH("
  local global=")SH",
                      absl::StrJoin(global, " "), R"SH( --help"
  local cmd="" i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case " $cmds " in *" ${COMP_WORDS[i]} "*) cmd="${COMP_WORDS[i]}"; break;; esac
  done
  case "$prev" in
    -f|--format) COMPREPLY=($(compgen -W "table json csv" -- "$cur")); return;;
    -m|--model) COMPREPLY=($(compgen -W "$(_sinkscope_names models)" -- "$cur")); return;;
    -d|--dataset) COMPREPLY=($(compgen -W "$(_sinkscope_names datasets)" -- "$cur")); return;;
    --spec|--texts-file|--token-file|--tls-ca|--save) COMPREPLY=($(compgen -f -- "$cur")); return;;
    --out|--plot) COMPREPLY=($(compgen -d -- "$cur")); return;;
    )SH",
                      absl::StrJoin(plain, "|"), R"SH() return;;
  esac
  local opts="$global"
  case "$cmd" in
)SH",
                      cases, R"SH(    "") COMPREPLY=($(compgen -W "$cmds $global" -- "$cur")); return;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts $global" -- "$cur"))
  else
    COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -o filenames -F _sinkscope sinkscope
)SH");
}

}  // namespace sinkscope::client
