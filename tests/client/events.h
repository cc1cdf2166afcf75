// Synthetic job event streams for the client tests: what a paired RoPE/DroPE phase job with per-prompt results
// streams, with realistic magnitudes (a BOS spike of ~700, massive counts, perplexities of ~10-1000), sized like
// Llama-2-7B (32 layers × 32 heads) or the tiny pair.
#pragma once

#include <string>
#include <vector>

#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::testing {

struct SyntheticJob {
  std::string job_id = "j-00000000000000aa";
  std::vector<std::string> models = {"llama2-7b", "llama2-7b-drope"};
  int layers = 32;
  int heads = 32;
  int prompts = 3;
  bool per_prompt = true;
  bool token_ids = true;
  bool activation_stats = false;
};

std::vector<sinkscope::v1::JobEvent> MakeEvents(const SyntheticJob& j);

}  // namespace sinkscope::testing
