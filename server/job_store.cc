#include "server/job_store.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <iterator>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"
#include "server/job_state.h"

namespace sinkscope::server {
namespace {

absl::Status Unknown(const std::string& id) { return absl::NotFoundError(absl::StrCat("unknown job '", id, "'")); }

int64_t RecordBytes(const JobRecord& r) {
  return static_cast<int64_t>(r.job.ByteSizeLong() + r.request.ByteSizeLong());
}

}  // namespace

bool ShouldForget(const Retention& r, int64_t finished, int64_t total_bytes, double age_seconds) {
  return finished > r.keep_finished || (r.max_bytes > 0 && total_bytes > r.max_bytes) ||
         (r.max_age_seconds > 0 && age_seconds > r.max_age_seconds);
}

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
  jobs_[id].record = std::move(record);
  return seq;
}

absl::StatusOr<JobRecord> InMemoryJobStore::Get(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return Unknown(id);
  return it->second.record;
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
    const JobRecord& r = jobs_.at(it->second).record;
    if (!q.states.empty() && std::find(q.states.begin(), q.states.end(), r.job.state()) == q.states.end()) continue;
    if (!q.owner.empty() && r.owner != q.owner) continue;
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
  if (it == jobs_.end()) return Unknown(id);
  JobRecord copy = it->second.record;  // fn works on a copy so that a failing fn leaves the record as it was
  RETURN_IF_ERROR(fn(copy));
  it->second.record = std::move(copy);
  return it->second.record;
}

std::vector<std::string> InMemoryJobStore::ForgetFinished(const Retention& retention) {
  std::lock_guard<std::mutex> l(mu_);
  int64_t finished = 0, total = 0;
  for (const auto& [id, e] : jobs_) {
    finished += IsTerminal(e.record.job.state());
    total += RecordBytes(e.record) + e.event_bytes;
  }
  const int64_t now_ms = google::protobuf::util::TimeUtil::TimestampToMilliseconds(
      Now());
  std::vector<std::string> forgotten;
  for (auto it = order_.begin(); it != order_.end();) {
    const Entry& e = jobs_.at(it->second);
    const JobRecord& r = e.record;
    const double age =
        1e-3 * static_cast<double>(now_ms - google::protobuf::util::TimeUtil::TimestampToMilliseconds(
                                                r.job.finished_at()));
    if (!IsTerminal(r.job.state()) || !ShouldForget(retention, finished, total, age)) {
      ++it;
      continue;
    }
    if (!r.idempotency_key.empty()) keys_.erase({r.owner, r.idempotency_key});
    --finished;
    total -= RecordBytes(r) + e.event_bytes;
    forgotten.push_back(it->second);
    jobs_.erase(it->second);
    it = order_.erase(it);
  }
  if (!forgotten.empty()) {  // cache entries that answer with a forgotten job
    const std::set<std::string> gone(forgotten.begin(), forgotten.end());
    for (auto it = cache_.begin(); it != cache_.end();) it = gone.count(it->second) ? cache_.erase(it) : std::next(it);
  }
  return forgotten;
}

std::vector<JobRecord> InMemoryJobStore::Unfinished() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<JobRecord> out;
  for (const auto& [seq, id] : order_)
    if (!jobs_.at(id).closed) out.push_back(jobs_.at(id).record);
  return out;
}

absl::StatusOr<std::string> InMemoryJobStore::FindCached(const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return absl::NotFoundError("not cached");
  return it->second;
}

absl::Status InMemoryJobStore::SetCached(const std::string& key, const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  if (!jobs_.count(id)) return Unknown(id);
  cache_[key] = id;
  return absl::OkStatus();
}

absl::Status InMemoryJobStore::AppendEvent(const sinkscope::v1::JobEvent& ev) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = jobs_.find(ev.job_id());
  if (it == jobs_.end()) return Unknown(ev.job_id());
  it->second.event_bytes += static_cast<int64_t>(ev.ByteSizeLong());
  it->second.closed |= ev.has_finished();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> InMemoryJobStore::LoadEvents(const std::string& id) const {
  return Unknown(id);  // the EventLog holds the only copy, for as long as the job is kept
}

absl::StatusOr<uint64_t> InMemoryJobStore::CountEvents(const std::string& id) const { return Unknown(id); }

}  // namespace sinkscope::server
