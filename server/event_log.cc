#include "server/event_log.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"

namespace sinkscope::server {

namespace {
absl::Status Unknown(const std::string& id) { return absl::NotFoundError(absl::StrCat("unknown job '", id, "'")); }

void Wake(std::vector<std::function<void()>>& waiters) {
  for (auto& w : waiters) w();
}
}  // namespace

void EventLog::Open(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  logs_.try_emplace(id);
}

absl::StatusOr<uint64_t> EventLog::Append(const std::string& id, sinkscope::v1::JobEvent ev, bool last) {
  std::vector<std::function<void()>> waiters;
  uint64_t seq;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = logs_.find(id);
    if (it == logs_.end()) return Unknown(id);
    Log& log = it->second;
    if (log.closed) return absl::FailedPreconditionError(absl::StrCat("job ", id, ": event after Finished"));
    seq = log.events.size();
    ev.set_job_id(id);
    ev.set_seq(seq);
    *ev.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
    log.events.push_back(std::move(ev));
    log.closed = last;
    waiters.swap(log.waiters);
  }
  // Waiters (StreamJob reactors) call Next from inside the callback: they must run without mu_ held.
  Wake(waiters);
  return seq;
}

absl::StatusOr<EventLog::Poll> EventLog::Next(const std::string& id, uint64_t seq, sinkscope::v1::JobEvent* out,
                                              std::function<void()> notify) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = logs_.find(id);
  if (it == logs_.end()) return Unknown(id);
  Log& log = it->second;
  if (seq < log.events.size()) {
    *out = log.events[seq];
    return Poll::kEvent;
  }
  if (log.closed) return Poll::kEnd;
  log.waiters.push_back(std::move(notify));
  return Poll::kWait;
}

uint64_t EventLog::size(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = logs_.find(id);
  return it == logs_.end() ? 0 : it->second.events.size();
}

void EventLog::Drop(const std::string& id) {
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = logs_.find(id);
    if (it == logs_.end()) return;
    waiters.swap(it->second.waiters);
    logs_.erase(it);
  }
  Wake(waiters);
}

}  // namespace sinkscope::server
