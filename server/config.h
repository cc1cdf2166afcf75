// Server configuration file (YAML): which models to load and the limits every job obeys.
//
//   models:
//     - name: tiny-rope              # registry name used by jobs
//       path: ../models/tiny-rope    # HF snapshot dir; relative paths are relative to this file
//       dtype: float32               # compute dtype: float32 | bfloat16 | float16
//       device: cpu                  # cpu | cuda | cuda:N
//       digest: true                 # SHA-256 of the weights at load (provenance; false skips reading every byte)
//       description: "..."
//   datasets_dir: ../models/datasets # built-in dataset files (brown-heldout.txt)
//   limits: {max_tokens_per_prompt: 4096, max_prompts_per_job: 1000, max_queued_jobs: 64, pack_tokens: 4096}
// Limits a job obeys are the engine's job::RunLimits (their defaults live there); max_queued_jobs is the server's.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/model_handle.h"

namespace sinkscope::server {

struct ModelConfig {
  std::string name, path, dtype = "float32", device = "cpu", description;
  bool digest = true;
};

struct ServerConfig {
  std::vector<ModelConfig> models;
  std::string datasets_dir;  // also limits.data_dir
  job::RunLimits limits;
  int32_t max_queued_jobs = 64;
};

// Parses YAML text; `base_dir` resolves relative paths. Errors name the key ("models[1].dtype: ...").
absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& base_dir);
absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path);

}  // namespace sinkscope::server
