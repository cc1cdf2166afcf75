// Built-in datasets: prompt sets a job can name in Inputs.dataset. Torch-free.
//
// Compiled in (exact strings of the study, docs/study.md §5.1.1 and §5.2.1; Python's `s * n` = n copies of s, trailing
// space included):
//   study-massive-comparison      3 texts, run_llama_comparison.py (Exp. 1 per-layer table)
//   study-disruption-literary     3 texts, run_disruption_rigorous.py (identification + trial set of Exp. 2)
//   study-disruption-technical    3 texts, run_disruption_rigorous.py (by_eval_set)
//   study-disruption-repetitive   3 texts, run_disruption_rigorous.py (by_eval_set)
// Read from <data_dir>:
//   brown-heldout                 <data_dir>/brown-heldout.txt, one prompt per non-empty line (held-out Brown
//                                 corpus documents; produced by the corpus tooling)
// digest = SHA-256 (hex) of the JSON array of the prompts (nlohmann::json::dump(), UTF-8): identifies the exact
// prompts whatever the source.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope::job {

struct Dataset {
  std::string name;
  std::string description;
  std::vector<std::string> prompts;
  std::string digest;  // SHA-256 hex of the JSON array of prompts
  std::string source;  // provenance / license note
};

// Every dataset available now: the compiled-in ones, plus file-backed ones whose file exists in data_dir
// (an empty data_dir lists the compiled-in ones only).
std::vector<Dataset> ListDatasets(const std::string& data_dir);

// One dataset by name. NotFound for an unknown name (the message lists the known names) or a missing file (the
// message names the path); InvalidArgument for a file with no prompt.
absl::StatusOr<Dataset> LoadDataset(const std::string& name, const std::string& data_dir);

// Digest of a prompt list as used in Dataset::digest.
std::string PromptsDigest(const std::vector<std::string>& prompts);

}  // namespace sinkscope::job
