// sinkscope.v1 protobuf <-> engine structs (common/job/job_spec.h). The only place the two meet.
#pragma once

#include "absl/status/statusor.h"
#include "common/job/job_spec.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

// Structural conversion with defaults filled in; InvalidArgument naming the field for malformed specs
// (no models, no analyses, unset oneofs, unknown enum values, out-of-range numbers). Semantic checks that need
// the models (hook names, layer ranges, vocab) are done by job::ValidateJob.
absl::StatusOr<job::JobSpec> FromProto(const sinkscope::v1::JobSpec& p);
// The spec with every default made explicit (stored as Job.spec).
sinkscope::v1::JobSpec WithDefaults(const sinkscope::v1::JobSpec& p);

void ToProto(const job::LayerResult& r, sinkscope::v1::LayerResult* p);
void ToProto(const job::PerplexityResult& r, sinkscope::v1::PerplexityResult* p);
void ToProto(const job::Summary& s, sinkscope::v1::Summary* p);
void ToProto(const job::Progress& s, sinkscope::v1::Progress* p);
void ToProto(const job::Stat& s, sinkscope::v1::Stat* p);

}  // namespace sinkscope::server
