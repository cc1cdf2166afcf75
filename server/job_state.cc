#include "server/job_state.h"

#include <google/protobuf/util/time_util.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

absl::Status CheckTransition(v1::JobState from, v1::JobState to) {
  bool ok = false;
  switch (from) {
    case v1::JOB_STATE_QUEUED:
      ok = to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_CANCELLED;
      break;
    case v1::JOB_STATE_RUNNING:
      ok = IsTerminal(to) || to == v1::JOB_STATE_INTERRUPTED;
      break;
    case v1::JOB_STATE_INTERRUPTED:
      ok = to == v1::JOB_STATE_QUEUED || to == v1::JOB_STATE_FAILED;
      break;
    default:
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("illegal job state change ", v1::JobState_Name(from), " -> ", v1::JobState_Name(to)));
}

google::protobuf::Timestamp Now() {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  google::protobuf::Timestamp t;
  t.set_seconds(us / 1000000);
  t.set_nanos(static_cast<int32_t>(us % 1000000) * 1000);
  return t;
}

absl::Status SetState(v1::Job* job, v1::JobState to, const absl::Status& why) {
  RETURN_IF_ERROR(CheckTransition(job->state(), to));
  const auto now = Now();
  job->set_state(to);
  job->set_queue_position(-1);
  switch (to) {
    case v1::JOB_STATE_RUNNING:
      *job->mutable_started_at() = now;
      return absl::OkStatus();
    case v1::JOB_STATE_QUEUED:  // from INTERRUPTED: the next run starts from the first pass
      job->set_progress(0);
      job->clear_error();
      job->clear_summary();  // a crash may have come between the summary and the end
      return absl::OkStatus();
    case v1::JOB_STATE_INTERRUPTED:
      break;  // not an end: no finished_at
    default:
      *job->mutable_finished_at() = now;
      if (to == v1::JOB_STATE_SUCCEEDED) job->set_progress(1.0);
  }
  if (!why.ok()) {
    job->mutable_error()->set_code(static_cast<int>(why.code()));
    job->mutable_error()->set_message(std::string(why.message()));
  }
  return absl::OkStatus();
}

}  // namespace sinkscope::server
