// Where job records live: put/get/list/update, idempotency keys per owner, retention of finished jobs.
//
// Records are plain data (the API's Job message plus who submitted it and under which key), so a backend can keep
// them in memory (InMemoryJobStore, today) or in a database row each (a later SQLite store behind this same
// interface). Neither the engine's plan nor the event log is stored here: the scheduler holds a job's plan while
// it is queued or running, and events live in the EventLog.
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
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server {

struct JobRecord {
  sinkscope::v1::Job job;       // id, state, times, spec (defaults explicit), progress, summary, error
  std::string owner;            // principal that submitted it
  std::string idempotency_key;  // empty = none
  uint64_t seq = 0;             // submission order, assigned by Put
};

struct JobQuery {
  std::vector<sinkscope::v1::JobState> states;  // empty = every state
  size_t offset = 0;                            // matching records to skip, newest first
  size_t limit = 50;
};

struct JobPage {
  std::vector<JobRecord> records;  // newest first
  bool more = false;               // further records match after this page
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a new QUEUED record and returns its seq. AlreadyExists when the id, or the (owner, idempotency key)
  // pair, is taken (a concurrent retry won the race).
  virtual absl::StatusOr<uint64_t> Put(JobRecord record) = 0;
  // NotFound "unknown job 'ID'" for an id never stored or already forgotten.
  virtual absl::StatusOr<JobRecord> Get(const std::string& id) const = 0;
  // The job first submitted by `owner` under `key`; NotFound if none (or forgotten: the key is then free again).
  virtual absl::StatusOr<std::string> FindByKey(const std::string& owner, const std::string& key) const = 0;
  virtual JobPage List(const JobQuery& query) const = 0;
  // Applies `fn` to the record and stores the result, or leaves it unchanged when fn fails (its error is
  // returned). fn must not change id, owner, idempotency_key or seq. Returns the record as stored.
  virtual absl::StatusOr<JobRecord> Update(const std::string& id,
                                           const std::function<absl::Status(JobRecord&)>& fn) = 0;
  // Retention: forgets the oldest-submitted finished jobs beyond the newest `keep` finished ones (queued and
  // running jobs are never forgotten) and frees their keys. Returns the forgotten ids.
  virtual std::vector<std::string> ForgetFinished(int32_t keep) = 0;
};

class InMemoryJobStore final : public JobStore {
 public:
  absl::StatusOr<uint64_t> Put(JobRecord record) override;
  absl::StatusOr<JobRecord> Get(const std::string& id) const override;
  absl::StatusOr<std::string> FindByKey(const std::string& owner, const std::string& key) const override;
  JobPage List(const JobQuery& query) const override;
  absl::StatusOr<JobRecord> Update(const std::string& id, const std::function<absl::Status(JobRecord&)>& fn) override;
  std::vector<std::string> ForgetFinished(int32_t keep) override;

 private:
  mutable std::mutex mu_;
  std::map<std::string, JobRecord> jobs_;                                  // by id
  std::map<uint64_t, std::string> order_;                                  // seq -> id: submission order
  std::map<std::pair<std::string, std::string>, std::string> keys_;        // (owner, key) -> id
  uint64_t next_seq_ = 0;
};

}  // namespace sinkscope::server
