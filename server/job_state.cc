#include "server/job_state.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

absl::Status CheckTransition(v1::JobState from, v1::JobState to) {
  const bool ok = (from == v1::JOB_STATE_QUEUED && (to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_CANCELLED)) ||
                  (from == v1::JOB_STATE_RUNNING && IsTerminal(to));
  if (ok) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("illegal job state change ", v1::JobState_Name(from), " -> ", v1::JobState_Name(to)));
}

absl::Status SetState(v1::Job* job, v1::JobState to, const absl::Status& why) {
  RETURN_IF_ERROR(CheckTransition(job->state(), to));
  const auto now = google::protobuf::util::TimeUtil::GetCurrentTime();
  job->set_state(to);
  job->set_queue_position(-1);
  if (to == v1::JOB_STATE_RUNNING) {
    *job->mutable_started_at() = now;
    return absl::OkStatus();
  }
  *job->mutable_finished_at() = now;
  if (to == v1::JOB_STATE_SUCCEEDED) job->set_progress(1.0);
  if (!why.ok()) {
    job->mutable_error()->set_code(static_cast<int>(why.code()));
    job->mutable_error()->set_message(std::string(why.message()));
  }
  return absl::OkStatus();
}

}  // namespace sinkscope::server
