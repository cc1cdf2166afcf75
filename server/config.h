// Server configuration file (YAML): which models to load and the limits every job obeys.
//
//   models:
//     - name: tiny-rope              # registry name used by jobs
//       path: ../models/tiny-rope    # HF snapshot dir; relative paths are relative to this file
//       dtype: float32               # compute dtype: float32 | bfloat16 | float16
//       device: cpu                  # cpu | cuda | cuda:N
//       digest: true                 # SHA-256 of the weights at load (provenance; false skips reading every byte)
//       tokenizer: PATH              # tokenizer.model (or its dir) elsewhere; default: beside the weights, if any
//       description: "..."
//   datasets_dir: ../models/datasets # built-in dataset files (brown-heldout.txt)
//   load_timeout_seconds: 600        # per model; a load stalled on a slow file system fails that model only
//   limits:
//     max_tokens_per_prompt: 4096    # longer prompts are refused unless a job asks to truncate (model context too)
//     max_prompts_per_job: 1000
//     max_queued_jobs: 64            # more waiting jobs -> RESOURCE_EXHAUSTED
//     pack_tokens: 4096              # prompts packed per forward (0 = one prompt per forward)
//     max_tokens_per_job: 20000000   # tokens through all of a job's forwards (models x conditions x controls)
//     max_planned_passes: 100000     # forwards a job may plan
//     forward_memory_bytes: auto     # activation memory one forward may use; auto (default): half of what the
//                                    #   model's device has beside the weights resident there; 0 = none
//     residual_memory_bytes: auto    # residual streams the layer-major baseline holds (waves, prefix reuse);
//                                    #   auto (default): a quarter of that; 0 = none (one wave)
//     max_request_bytes: 4194304     # largest SubmitJob request (gRPC message)
//     attention: auto                # packed prompts of different lengths attend in equal-length runs (equal) or
//                                    #   in groups padded to their longest prompt (padded: fewer batches); auto
//                                    #   (default): padded for a model on a GPU, equal on a CPU
//   state:                           # job records, events and the result cache (durable with --state_dir)
//     interrupted: requeue           # a job running when the server stopped (crash, kill, restart): requeue runs
//                                    #   it again from the start at the next start; fail ends it FAILED (ABORTED)
//     keep_finished: 1000            # finished jobs kept, newest by submission; older ones and their events go
//     max_bytes: 0                   # bound on the stored records + events (serialized bytes); 0 = none
//     max_age_days: 0                # finished jobs older than this (since they finished) go; 0 = never
//     cache: true                    # answer a repeated job (same models, weights, spec, inputs, server version)
//                                    #   from the first run's results; JobSpec.no_cache bypasses it
// Limits a job obeys are the engine's job::RunLimits (their defaults live there); max_queued_jobs is the server's.
// Retention applies in memory too (it bounds the server's memory); `interrupted` only matters with --state_dir.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/model_handle.h"

namespace sinkscope::server {

struct ModelConfig {
  std::string name, path, dtype = "float32", device = "cpu", description;
  bool digest = true;
  std::string tokenizer = "";  // tokenizer.model file or its directory; empty = beside the weights (optional)
};

struct StateConfig {
  bool requeue_interrupted = true;  // interrupted: requeue | fail
  int64_t keep_finished = 1000;
  int64_t max_bytes = 0;
  double max_age_days = 0;
  bool cache = true;
};

struct ServerConfig {
  std::vector<ModelConfig> models;
  std::string datasets_dir;  // also limits.data_dir
  job::RunLimits limits;
  int32_t max_queued_jobs = 64;
  int32_t max_request_bytes = 4 << 20;
  // limits.forward_memory_bytes / residual_memory_bytes absent or `auto`: the registry sizes them per model from
  // its device (registry.h MemoryShares), so that a prompt that can never fit is refused at submit instead of
  // failing the worker, and waves fit the device (explicit 0 = no budget).
  bool forward_memory_auto = true;
  bool residual_memory_auto = true;
  int32_t load_timeout_seconds = 600;  // a model still loading after this is FAILED; the others serve
  StateConfig state;
};

// Parses YAML text; `base_dir` resolves relative paths. Errors name the key ("models[1].dtype: ...").
absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& base_dir);
absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path);

}  // namespace sinkscope::server
