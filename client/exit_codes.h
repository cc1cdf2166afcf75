// Exit status of every sinkscope command (docs/client.md):
//   0 ok · 1 other error · 2 usage (bad flag, bad spec, rejected job) · 3 server unavailable, busy or credentials
//   refused · 4 a job failed · 5 a job was cancelled (or the command was interrupted)
#pragma once

#include <grpcpp/support/status.h>

#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

enum ExitCode : int {
  kExitOk = 0,
  kExitError = 1,
  kExitUsage = 2,
  kExitUnavailable = 3,
  kExitJobFailed = 4,
  kExitCancelled = 5,
};

// A failed RPC's exit status: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAUTHENTICATED and
// PERMISSION_DENIED → 3; INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE, ALREADY_EXISTS → 2
// (the request was wrong); CANCELLED → 5; anything else → 1.
inline int ExitCodeFor(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return kExitOk;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED: return kExitUnavailable;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::ALREADY_EXISTS: return kExitUsage;
    case grpc::StatusCode::CANCELLED: return kExitCancelled;
    default: return kExitError;
  }
}

// A finished job's exit status: SUCCEEDED 0, CANCELLED (by a client or its deadline) 5, anything else 4.
inline int ExitCodeFor(sinkscope::v1::JobState s) {
  if (s == sinkscope::v1::JOB_STATE_SUCCEEDED) return kExitOk;
  if (s == sinkscope::v1::JOB_STATE_CANCELLED) return kExitCancelled;
  return kExitJobFailed;
}

}  // namespace sinkscope::client
