// The rules a JobSpec must follow, checked against the models it names. Every range rule and every message lives
// here and only here (the server converts protobuf structure, it does not re-check ranges). Torch-free header.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job/datasets.h"
#include "common/job/job_spec.h"
#include "common/job/model_handle.h"

namespace sinkscope::job {

// Built-in datasets a job names, each read at most once per job (validation counts the prompts, planning
// tokenises them).
class DatasetCache {
 public:
  explicit DatasetCache(std::string data_dir) : data_dir_(std::move(data_dir)) {}
  absl::StatusOr<const Dataset*> Get(const std::string& name);

 private:
  std::string data_dir_;
  std::map<std::string, absl::StatusOr<Dataset>> loaded_;
};

// Model names: at least one, none empty, no duplicates. InvalidArgument naming "models[i]".
absl::Status ValidateModelNames(const std::vector<std::string>& names);

// Every rule of the spec (names, limits, inputs, analyses, interventions) against `models` (models[i] is the
// handle of spec.models[i]). InvalidArgument / NotFound / FailedPrecondition with a message naming the field,
// e.g. "analyses[0].sink_rate.tau: 1.5 not in [0,1]". The first broken rule wins.
absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                         DatasetCache* datasets);
absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits);

}  // namespace sinkscope::job
