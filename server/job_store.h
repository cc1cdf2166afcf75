// Where job records live: put/get/list/update, idempotency keys per owner, the events of every job (EventStore),
// the result cache's index, retention of finished jobs.
//
// Records are plain data (the API's Job message plus who submitted it, under which key, and the request as
// sent), so a backend keeps them in memory (InMemoryJobStore: the default, gone with the process) or in a
// database (SqliteJobStore, sqlite_job_store.h: sinkscoped --state_dir). The engine's plan is never stored: the
// scheduler holds it while the job waits or runs, and recovery after a restart re-plans from `request`.
//
// Contract for every backend: each call is atomic; Update is a read-modify-write of one record; state changes go
// through SetState (job_state.h) inside Update, never by writing Job.state directly.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/event_log.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

struct JobRecord {
  sinkscope::v1::Job job;          // id, state, times, spec (defaults explicit), progress, summary, error
  sinkscope::v1::JobSpec request;  // the spec as the client sent it: a restart re-plans the job from it
  std::string owner;               // principal that submitted it
  std::string idempotency_key;     // empty = none
  std::string cache_key;           // result-cache key (result_cache.h); empty = not cacheable
  uint64_t seq = 0;                // submission order, assigned by Put
};

struct JobQuery {
  std::vector<sinkscope::v1::JobState> states;  // empty = every state
  std::string owner;                            // empty = every owner
  size_t offset = 0;                            // matching records to skip, newest first
  size_t limit = 50;
};

struct JobPage {
  std::vector<JobRecord> records;  // newest first
  bool more = false;               // further records match after this page
};

// Which finished jobs to keep. A finished job is forgotten (record, events, key, cache entry) when it is older
// than max_age_seconds, or while more than keep_finished jobs are finished, or while all jobs together take
// more than max_bytes: oldest-submitted first. Queued, running and interrupted jobs are never forgotten.
struct Retention {
  int64_t keep_finished = 1000;
  int64_t max_bytes = 0;       // serialized records + events (SQLite: a job's events count once it has finished);
                               // 0 = no limit. Not the file size: SQLite pages carry some overhead of their own.
  double max_age_seconds = 0;  // since finished_at; 0 = no limit
};

class JobStore : public EventStore {
 public:
  // Inserts a new QUEUED record and returns its seq. AlreadyExists when the id, or the (owner, idempotency key)
  // pair, is taken (a concurrent retry won the race).
  virtual absl::StatusOr<uint64_t> Put(JobRecord record) = 0;
  // NotFound "unknown job 'ID'" for an id never stored or already forgotten.
  virtual absl::StatusOr<JobRecord> Get(const std::string& id) const = 0;
  // The job first submitted by `owner` under `key`; NotFound if none (or forgotten: the key is then free again).
  virtual absl::StatusOr<std::string> FindByKey(const std::string& owner, const std::string& key) const = 0;
  virtual JobPage List(const JobQuery& query) const = 0;
  // Applies `fn` to the record and stores the result, or leaves it unchanged when fn fails (its error is
  // returned). fn must not change id, owner, idempotency_key, seq, request, cache_key or job.spec. Returns the
  // record as stored.
  virtual absl::StatusOr<JobRecord> Update(const std::string& id,
                                           const std::function<absl::Status(JobRecord&)>& fn) = 0;
  // Retention (see Retention). Returns the forgotten ids.
  virtual std::vector<std::string> ForgetFinished(const Retention& retention) = 0;
  // Jobs whose event log has no Finished event yet, in submission order: what a restart has to recover. That is
  // every QUEUED, RUNNING and INTERRUPTED job, and a finished one whose Finished event a crash lost (the record
  // is updated first, the event appended next).
  virtual std::vector<JobRecord> Unfinished() const = 0;

  // Result cache index: the job whose results answer `key` (NotFound: none, or forgotten with its job).
  virtual absl::StatusOr<std::string> FindCached(const std::string& key) const = 0;
  // Points `key` at job `id` (replacing an older entry). NotFound for an unknown job.
  virtual absl::Status SetCached(const std::string& key, const std::string& id) = 0;
};

class InMemoryJobStore final : public JobStore {
 public:
  absl::StatusOr<uint64_t> Put(JobRecord record) override;
  absl::StatusOr<JobRecord> Get(const std::string& id) const override;
  absl::StatusOr<std::string> FindByKey(const std::string& owner, const std::string& key) const override;
  JobPage List(const JobQuery& query) const override;
  absl::StatusOr<JobRecord> Update(const std::string& id, const std::function<absl::Status(JobRecord&)>& fn) override;
  std::vector<std::string> ForgetFinished(const Retention& retention) override;
  std::vector<JobRecord> Unfinished() const override;
  absl::StatusOr<std::string> FindCached(const std::string& key) const override;
  absl::Status SetCached(const std::string& key, const std::string& id) override;

  // Events live in the EventLog's memory only; the store counts their bytes (Retention.max_bytes).
  absl::Status AppendEvent(const sinkscope::v1::JobEvent& ev) override;
  absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> LoadEvents(const std::string& id) const override;
  absl::StatusOr<uint64_t> CountEvents(const std::string& id) const override;
  bool durable() const override { return false; }

 private:
  struct Entry {
    JobRecord record;
    int64_t event_bytes = 0;
    bool closed = false;  // its Finished event was appended
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry> jobs_;                                // by id
  std::map<uint64_t, std::string> order_;                            // seq -> id: submission order
  std::map<std::pair<std::string, std::string>, std::string> keys_;  // (owner, key) -> id
  std::map<std::string, std::string> cache_;                         // cache key -> id
  uint64_t next_seq_ = 0;
};

// Whether a finished job must go: the decision both stores make, oldest-submitted first. `finished` and
// `total_bytes` are the counts before this job; `age_seconds` is since it finished.
bool ShouldForget(const Retention& r, int64_t finished, int64_t total_bytes, double age_seconds);

}  // namespace sinkscope::server
