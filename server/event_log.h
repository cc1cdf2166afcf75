// Every job's events: numbered from 0 without gaps, stamped with the job id and time. A watcher reads with Next
// from any seq: stored events first (replay), then it waits for live ones (follow). Attaching late, re-attaching
// and following live are one code path.
//
// With an EventStore (the job store), every event is handed to it before anyone can see it, so an event a watcher
// has read survives a crash. A log that is not in memory (after a restart, or dropped from memory) is loaded from
// the store on first use. With a durable store, closed logs (the job has finished) are only a cache: the least
// recently used are dropped from memory beyond `max_closed_in_memory` and read back when someone asks. Without
// one, memory is the only copy and a log lives until Drop.
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

// Where events go beyond memory. Implemented by every JobStore (job_store.h).
class EventStore {
 public:
  virtual ~EventStore() = default;
  // Stores one event (job_id and seq set, seqs in order from 0). NotFound for an unknown job.
  virtual absl::Status AppendEvent(const sinkscope::v1::JobEvent& ev) = 0;
  // Every stored event of the job, in seq order; NotFound for an unknown job (never stored or forgotten).
  virtual absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> LoadEvents(const std::string& id) const = 0;
  virtual absl::StatusOr<uint64_t> CountEvents(const std::string& id) const = 0;
  // True when LoadEvents returns every appended event (a database): memory is then only a cache.
  virtual bool durable() const = 0;
};

class EventLog {
 public:
  enum class Poll { kEvent, kWait, kEnd };

  explicit EventLog(EventStore* store = nullptr, size_t max_closed_in_memory = 256)
      : store_(store), max_closed_(max_closed_in_memory) {}

  // Starts an empty log for a new job (no-op when it exists). Jobs from before a restart are not opened: their
  // logs load from the store when first used.
  void Open(const std::string& id);

  // Appends `ev` with job_id, the next seq and the current time, and returns that seq. `last` closes the log (the
  // job's Finished event): later appends fail with FailedPrecondition. The store's error (the event is then not
  // published, so memory and store keep the same gap-free numbering). The job's waiters are called after the
  // log's lock is released, on this thread, so a waiter may call Next again. NotFound for an unknown job.
  absl::StatusOr<uint64_t> Append(const std::string& id, sinkscope::v1::JobEvent ev, bool last = false);

  // kEvent: event `seq` copied to *out. kWait: it does not exist yet, and `notify` will be called once, when the
  // next event is appended (the caller then calls Next again). kEnd: the log is closed and seq is past its end.
  // NotFound "unknown job 'ID'" for a job without a log (never submitted, or forgotten). Unavailable after
  // Shutdown instead of waiting.
  absl::StatusOr<Poll> Next(const std::string& id, uint64_t seq, sinkscope::v1::JobEvent* out,
                            std::function<void()> notify);

  // Every event of a closed log (the result cache replays them); FailedPrecondition while the job still runs.
  absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> Events(const std::string& id);

  // Events appended so far (0 for an unknown job).
  uint64_t size(const std::string& id) const;

  // Forgets a job's events (retention). Waiters, if any, are woken and find the job gone.
  void Drop(const std::string& id);

  // The server is stopping without finishing its jobs (a durable store keeps them for the next start): waiters
  // are woken and Next answers Unavailable instead of waiting, so open streams end now rather than at the end
  // of the shutdown grace period. The client re-attaches after the restart from the seq it had reached.
  void Shutdown();

 private:
  struct Log {
    std::vector<sinkscope::v1::JobEvent> events;
    std::vector<std::function<void()>> waiters;
    bool closed = false;
    uint64_t used = 0;  // last use, for dropping the least recently used closed logs
  };
  // The job's log, read from the store when it is not in memory. Requires mu_.
  absl::StatusOr<Log*> FindLocked(const std::string& id);
  // Drops the least recently used closed logs beyond max_closed_ (never `keep`). Requires mu_.
  void TrimLocked(const Log* keep);

  EventStore* const store_;
  const size_t max_closed_;
  mutable std::mutex mu_;
  std::map<std::string, Log> logs_;
  uint64_t tick_ = 0;
  bool stopping_ = false;
};

}  // namespace sinkscope::server
