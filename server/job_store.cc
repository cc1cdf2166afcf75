#include "server/job_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "server/job_state.h"

namespace sinkscope::server {

absl::StatusOr<uint64_t> InMemoryJobStore::Put(JobRecord record) {
  std::lock_guard<std::mutex> l(mu_);
  const std::string id = record.job.id();
  if (record.job.state() != sinkscope::v1::JOB_STATE_QUEUED)
    return absl::InvalidArgumentError(absl::StrCat("job ", id, ": a new record must be QUEUED"));
  if (jobs_.count(id)) return absl::AlreadyExistsError(absl::StrCat("job ", id, " exists"));
  const auto key = std::make_pair(record.owner, record.idempotency_key);
  if (!record.idempotency_key.empty() && keys_.count(key))
    return absl::AlreadyExistsError(absl::StrCat("idempotency key '", record.idempotency_key, "' is taken"));
  record.seq = next_seq_++;
  if (!record.idempotency_key.empty()) keys_[key] = id;
  order_[record.seq] = id;
  const uint64_t seq = record.seq;
  jobs_[id] = std::move(record);
  return seq;
}

absl::StatusOr<JobRecord> InMemoryJobStore::Get(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
  return it->second;
}

absl::StatusOr<std::string> InMemoryJobStore::FindByKey(const std::string& owner, const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = keys_.find({owner, key});
  if (it == keys_.end()) return absl::NotFoundError(absl::StrCat("no job with idempotency key '", key, "'"));
  return it->second;
}

JobPage InMemoryJobStore::List(const JobQuery& q) const {
  std::lock_guard<std::mutex> l(mu_);
  JobPage page;
  size_t matched = 0;
  for (auto it = order_.rbegin(); it != order_.rend(); ++it) {
    const JobRecord& r = jobs_.at(it->second);
    if (!q.states.empty() && std::find(q.states.begin(), q.states.end(), r.job.state()) == q.states.end()) continue;
    if (matched++ < q.offset) continue;
    if (page.records.size() == q.limit) {
      page.more = true;
      break;
    }
    page.records.push_back(r);
  }
  return page;
}

absl::StatusOr<JobRecord> InMemoryJobStore::Update(const std::string& id,
                                                   const std::function<absl::Status(JobRecord&)>& fn) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("unknown job '", id, "'"));
  JobRecord copy = it->second;  // fn works on a copy so that a failing fn leaves the record as it was
  RETURN_IF_ERROR(fn(copy));
  it->second = std::move(copy);
  return it->second;
}

std::vector<std::string> InMemoryJobStore::ForgetFinished(int32_t keep) {
  std::lock_guard<std::mutex> l(mu_);
  int64_t finished = 0;
  for (const auto& [id, r] : jobs_) finished += IsTerminal(r.job.state());
  std::vector<std::string> forgotten;
  for (auto it = order_.begin(); it != order_.end() && finished > keep;) {
    const JobRecord& r = jobs_.at(it->second);
    if (!IsTerminal(r.job.state())) {
      ++it;
      continue;
    }
    if (!r.idempotency_key.empty()) keys_.erase({r.owner, r.idempotency_key});
    forgotten.push_back(it->second);
    jobs_.erase(it->second);
    it = order_.erase(it);
    --finished;
  }
  return forgotten;
}

}  // namespace sinkscope::server
