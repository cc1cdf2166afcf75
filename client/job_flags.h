// Command-line description of a job (sinkscope run/submit) and its conversion to a sinkscope.v1.JobSpec.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/jobs.pb.h"

namespace CLI {
class App;
}

namespace sinkscope::client {

struct JobFlags {
  std::vector<std::string> models;
  std::vector<std::string> texts;
  std::string texts_file;  // one prompt per line; "-" = stdin
  std::string dataset;
  std::vector<std::string> ids;  // "1,450,29871" per prompt
  int max_prompts = 0;
  int max_tokens = 0;
  bool truncate_to_context = false;  // cut prompts longer than a model's context (else INVALID_ARGUMENT)
  // analyses
  bool phase = false;  // preset: the study's RoPE-vs-DroPE phase comparison
  bool sink_rate = false;
  double tau = -1;
  std::string query_rows;  // all | exclude-bos
  std::string attention;   // model | pre-rotary
  bool massive = false;
  double lambda = -1;
  bool post_rotary = false;
  std::string scope;  // layer | head
  int top_k = 0;
  bool residual = false;
  bool entropy = false;
  bool normalized_entropy = false;
  bool final_norm_last_layer = false;
  bool perplexity = false;
  bool weight_by_t = false;
  std::vector<std::string> bos_mlp;  // "spike", "jump", or a layer number
  bool qk_disruption = false;
  std::string qk_replacement;  // zero | mean
  std::vector<uint64_t> control_seeds;
  int top_per_head = 0;
  std::vector<std::string> ablate_heads;  // "L:H"
  std::vector<std::string> stats_hooks;
  std::string spec_file;  // JobSpec JSON; -m, --max-*, switches, scheduling override it
  // outputs
  bool per_prompt = false;      // each prompt's own per-layer metrics and perplexities (PromptResult events)
  bool emit_token_ids = false;  // and its token ids (implies per_prompt)
  bool no_cache = false;        // run even when the server has the results cached
  // scheduling
  int priority = 0;
  double deadline = 0;
  std::string label;
  uint64_t seed = 0;
};

// Registers the job flags on a CLI11 (sub)command.
void AddJobFlags(CLI::App* app, JobFlags* f);
// Builds the JobSpec; InvalidArgument naming the flag on bad combinations. Intervention labels are left to the
// server, which generates the documented ones (bos_mlp@spike, bos_mlp@jump, bos_mlp@L2, qk_massive, top1_per_head,
// head_ablation; docs/analyses.md).
absl::StatusOr<sinkscope::v1::JobSpec> BuildJobSpec(const JobFlags& f);
// A job given as command-line words (a batch file's CLI-style line: "-m tiny-rope -d brown-heldout --sink-rate");
// relative --spec and --texts-file paths are taken relative to `base_dir`.
absl::StatusOr<sinkscope::v1::JobSpec> ParseJobArgs(const std::vector<std::string>& args,
                                                    const std::string& base_dir = "");
// Splits a command line into words the way a POSIX shell would for quotes and backslashes (no expansions).
absl::StatusOr<std::vector<std::string>> SplitWords(const std::string& line);

}  // namespace sinkscope::client
