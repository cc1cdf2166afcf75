// A batch file: the jobs of `sinkscope batch`. JSON lines (one job a line; blank lines and '#' comments skipped)
// or YAML (.yaml/.yml: a list, or a map with a `jobs:` list). Each job is one of
//   {"models": [...], "inputs": {...}, "analyses": [...]}            a JobSpec (protobuf JSON mapping)
//   {"name": "rope-sink", "spec": {...JobSpec...}}                   a named JobSpec
//   {"name": "phase", "spec": "specs/phase.json"}                    a JobSpec file, relative to the batch file
//   -m tiny-rope -d brown-heldout --sink-rate                        CLI-style: the flags of `sinkscope run`
//   {"name": "rope-sink", "args": "-m tiny-rope -d brown-heldout --sink-rate"}
// Names (default: the job's --label, else job-001, job-002, ... by position) name the result files; they are made
// file-safe and unique.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

struct BatchJob {
  std::string name;
  sinkscope::v1::JobSpec spec;
  std::string where;  // "jobs.jsonl:3", for messages
};

// Reads and checks every job of the file (nothing is submitted); errors name the file and line or item.
absl::StatusOr<std::vector<BatchJob>> ReadBatchFile(const std::string& path);
// The same from text; `yaml` selects the syntax, `where` prefixes positions, `base_dir` anchors relative paths.
absl::StatusOr<std::vector<BatchJob>> ParseBatchText(const std::string& text, bool yaml, const std::string& where,
                                                     const std::string& base_dir);

}  // namespace sinkscope::client
