// The result cache's key. A job whose key equals that of an earlier SUCCEEDED job is answered from the store:
// a new job whose events are the earlier job's (re-stamped with the new id, seq and time), its summary marked
// cached / cached_from (JobManager). JobSpec.no_cache runs the job anyway and makes it the entry for its key.
//
// The key is SHA-256 over everything that decides the numbers:
//   the engine version (the server's version string: a new engine may compute differently),
//   per model in job order: registry name, weights digest, tokenizer digest, compute dtype, device,
//   the canonical plan: the validated engine spec converted back to proto with every default explicit
//     (convert's ToProto, without the scheduler's fields: priority, deadline, label, nor no_cache), serialized
//     deterministically,
//   the plan's inputs_digest (every prompt's token ids, per model, after truncation).
// Server limits need no part of their own: truncation shows in the token ids, and packing never changes results.
//
// A model loaded without a weights digest (YAML `digest: false`) makes the job uncacheable (empty key): without
// the digest, new weights under the same name and path would be answered with the old weights' numbers.
#pragma once

#include <string>

#include "common/job/plan.h"
#include "google/protobuf/message.h"

namespace sinkscope::server {

// Empty when the job cannot be cached (see above).
std::string CacheKey(const job::Plan& plan, const std::string& engine_version);

// The same message always gives the same bytes (map order fixed): spec digests and cache keys depend on it.
std::string DeterministicBytes(const google::protobuf::Message& m);

}  // namespace sinkscope::server
