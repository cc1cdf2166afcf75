// A job's lifecycle, changed in one place:
//
//   QUEUED ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED
//      └──────────────────▶ CANCELLED            (cancelled, deadline passed or shutdown before it ran)
//
// SetState is the only code that writes Job.state; it refuses any other transition (Triton's SetState idea), so a
// bug that would finish a job twice or revive a finished one is an error instead of a corrupted record.
#pragma once

#include "absl/status/status.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

bool IsTerminal(sinkscope::v1::JobState s);

// OK for the arrows above; FailedPrecondition naming both states otherwise.
absl::Status CheckTransition(sinkscope::v1::JobState from, sinkscope::v1::JobState to);

// Moves `job` to `to` after CheckTransition and stamps what the move implies: started_at (RUNNING), finished_at,
// queue_position -1 (leaving QUEUED), progress 1 (SUCCEEDED), error (= `why` unless OK). Leaves `job` unchanged on
// error.
absl::Status SetState(sinkscope::v1::Job* job, sinkscope::v1::JobState to, const absl::Status& why);

}  // namespace sinkscope::server
