// Every job's events, in memory: numbered from 0 without gaps, stamped with the job id and time, kept until the
// job is forgotten. A watcher reads with Next from any seq: stored events first (replay), then it waits for live
// ones (follow). Attaching late, re-attaching and following live are one code path.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

class EventLog {
 public:
  enum class Poll { kEvent, kWait, kEnd };

  // Starts an empty log for a new job (no-op when it exists).
  void Open(const std::string& id);

  // Appends `ev` with job_id, the next seq and the current time, and returns that seq. `last` closes the log (the
  // job's Finished event): later appends fail with FailedPrecondition. The job's waiters are called after the
  // log's lock is released, on this thread, so a waiter may call Next again. NotFound for an unknown job.
  absl::StatusOr<uint64_t> Append(const std::string& id, sinkscope::v1::JobEvent ev, bool last = false);

  // kEvent: event `seq` copied to *out. kWait: it does not exist yet, and `notify` will be called once, when the
  // next event is appended (the caller then calls Next again). kEnd: the log is closed and seq is past its end.
  // NotFound "unknown job 'ID'" for a job without a log (never submitted, or forgotten).
  absl::StatusOr<Poll> Next(const std::string& id, uint64_t seq, sinkscope::v1::JobEvent* out,
                            std::function<void()> notify);

  // Events appended so far (0 for an unknown job).
  uint64_t size(const std::string& id) const;

  // Forgets a job's events (retention). Waiters, if any, are woken and find the job gone.
  void Drop(const std::string& id);

 private:
  struct Log {
    std::vector<sinkscope::v1::JobEvent> events;
    std::vector<std::function<void()>> waiters;
    bool closed = false;
  };
  mutable std::mutex mu_;
  std::map<std::string, Log> logs_;
};

}  // namespace sinkscope::server
