// A job's lifecycle, changed in one place:
//
//   QUEUED ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED
//      │          │
//      │          └──▶ INTERRUPTED ──▶ QUEUED  (the server stopped while it ran: crash, kill -9, restart; at the
//      │                    │                   next start it runs again from the beginning ...)
//      │                    └──────▶ FAILED    (... or fails, as the config's state.interrupted says, or when it
//      │                                        can no longer be planned: a model gone, a dataset missing)
//      └──────────────────▶ CANCELLED          (cancelled, deadline passed or shutdown before it ran)
//
// SetState is the only code that writes Job.state; it refuses any other transition (Triton's SetState idea), so a
// bug that would finish a job twice or revive a finished one is an error instead of a corrupted record.
// INTERRUPTED is not terminal: nothing but a restart's recovery moves a job out of it.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/timestamp.pb.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

// The wall clock as a Timestamp, to the microsecond (protobuf 3.21's TimeUtil::GetCurrentTime has whole seconds).
google::protobuf::Timestamp Now();

bool IsTerminal(sinkscope::v1::JobState s);

// OK for the arrows above; FailedPrecondition naming both states otherwise.
absl::Status CheckTransition(sinkscope::v1::JobState from, sinkscope::v1::JobState to);

// Moves `job` to `to` after CheckTransition and stamps what the move implies: started_at (RUNNING), finished_at
// (terminal states), queue_position -1 (leaving QUEUED; a re-queued job gets its position from the scheduler),
// progress 1 (SUCCEEDED) or 0 (re-queued: the next run starts over, so progress, error and summary are cleared),
// error (= `why` unless OK). Leaves `job` unchanged on error.
absl::Status SetState(sinkscope::v1::Job* job, sinkscope::v1::JobState to, const absl::Status& why);

}  // namespace sinkscope::server
