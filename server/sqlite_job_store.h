// JobStore in SQLite (sinkscoped --state_dir DIR): jobs survive a restart or a crash.
//
// DIR/jobs.db, WAL journal, synchronous=NORMAL: every call commits before it returns, so a process crash
// (kill -9, OOM, a bug) loses nothing that was committed; a power loss or kernel crash may lose the last moments
// but never corrupts the file. Schema (user_version 1):
//
//   specs  (id, digest UNIQUE, spec BLOB)       a v1.JobSpec stored once: jobs with identical specs share the row
//   jobs   (seq PK, id UNIQUE, owner, idem_key, state, finished_ms, bytes, closed, spec_id → specs,
//           request_id → specs, cache_key, record BLOB)
//                                               the Job record (summary included; its spec lives in specs);
//                                               UNIQUE(owner, idem_key) is the idempotency index; closed = its
//                                               Finished event is stored (a partial index finds the others fast)
//   events (job_seq → jobs ON DELETE CASCADE, seq, event BLOB, PK(job_seq, seq))   gap-free per job
//   cache  (key PK, job_seq → jobs ON DELETE CASCADE)                              result cache index
//
// `bytes` is the job's record plus its events, serialized, counted when its Finished event is stored (before
// that, the record only: Retention.max_bytes adds them up and only ever forgets finished jobs). Blobs are the
// protobuf messages less what the row already says (Job.spec; JobEvent.job_id and seq). Forgetting a job deletes
// its row, and with it (cascade) its events and cache entry, then specs no job uses; freed pages go back to the
// file system (auto_vacuum=INCREMENTAL).
//
// One connection behind a mutex: SQLite serializes writers anyway and each call is short (tens of µs). DIR/lock
// (flock) keeps a second sinkscoped off the same directory: two servers would both recover the same jobs.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/job_store.h"
#include "server/sqlite_db.h"

namespace sinkscope::server {

class SqliteJobStore final : public JobStore {
 public:
  // Creates DIR if needed and opens (or creates) DIR/jobs.db. FailedPrecondition when another process holds the
  // directory or the file was written by a newer schema; the SQLite error otherwise.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& dir);
  ~SqliteJobStore() override;

  absl::StatusOr<uint64_t> Put(JobRecord record) override;
  absl::StatusOr<JobRecord> Get(const std::string& id) const override;
  absl::StatusOr<std::string> FindByKey(const std::string& owner, const std::string& key) const override;
  JobPage List(const JobQuery& query) const override;
  absl::StatusOr<JobRecord> Update(const std::string& id, const std::function<absl::Status(JobRecord&)>& fn) override;
  std::vector<std::string> ForgetFinished(const Retention& retention) override;
  std::vector<JobRecord> Unfinished() const override;
  absl::StatusOr<std::string> FindCached(const std::string& key) const override;
  absl::Status SetCached(const std::string& key, const std::string& id) override;

  absl::Status AppendEvent(const sinkscope::v1::JobEvent& ev) override;
  absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> LoadEvents(const std::string& id) const override;
  absl::StatusOr<uint64_t> CountEvents(const std::string& id) const override;
  bool durable() const override { return true; }

  const std::string& path() const { return path_; }

 private:
  SqliteJobStore() = default;
  absl::Status Init();
  // The rest require mu_.
  // The id of `spec`'s row, inserted if no job stored an identical spec before.
  absl::StatusOr<int64_t> SpecRow(const sinkscope::v1::JobSpec& spec);
  absl::StatusOr<JobRecord> GetLocked(const std::string& id) const;
  absl::StatusOr<int64_t> JobSeqLocked(const std::string& id) const;

  std::string path_;
  int lock_fd_ = -1;
  mutable std::mutex mu_;
  std::unique_ptr<SqliteDb> db_;  // mutable through the pointer: const calls read with cached statements
};

}  // namespace sinkscope::server
