#include "server/event_log.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "server/job_state.h"

namespace sinkscope::server {

namespace {
absl::Status Unknown(const std::string& id) { return absl::NotFoundError(absl::StrCat("unknown job '", id, "'")); }

void Wake(std::vector<std::function<void()>>& waiters) {
  for (auto& w : waiters) w();
}
}  // namespace

absl::StatusOr<EventLog::Log*> EventLog::FindLocked(const std::string& id) {
  auto it = logs_.find(id);
  if (it == logs_.end()) {
    if (store_ == nullptr) return Unknown(id);
    absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> stored = store_->LoadEvents(id);
    if (!stored.ok()) return stored.status();
    Log log;
    log.events = *std::move(stored);
    // A finished job's log ends with Finished; anything else belongs to a job that runs (or will run) again.
    log.closed = !log.events.empty() && log.events.back().has_finished();
    it = logs_.emplace(id, std::move(log)).first;
    it->second.used = ++tick_;
    TrimLocked(&it->second);
  }
  it->second.used = ++tick_;
  return &it->second;
}

void EventLog::TrimLocked(const Log* keep) {
  if (store_ == nullptr || !store_->durable()) return;
  for (;;) {
    size_t closed = 0;
    auto oldest = logs_.end();
    for (auto it = logs_.begin(); it != logs_.end(); ++it) {
      if (!it->second.closed || !it->second.waiters.empty() || &it->second == keep) continue;
      ++closed;
      if (oldest == logs_.end() || it->second.used < oldest->second.used) oldest = it;
    }
    if (closed <= max_closed_) return;
    logs_.erase(oldest);  // the store has every event: reloaded on the next use
  }
}

void EventLog::Open(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  logs_.try_emplace(id).first->second.used = ++tick_;
}

absl::StatusOr<uint64_t> EventLog::Append(const std::string& id, sinkscope::v1::JobEvent ev, bool last) {
  std::vector<std::function<void()>> waiters;
  uint64_t seq;
  {
    std::lock_guard<std::mutex> l(mu_);
    absl::StatusOr<Log*> found = FindLocked(id);
    if (!found.ok()) return found.status();
    Log& log = **found;
    if (log.closed) return absl::FailedPreconditionError(absl::StrCat("job ", id, ": event after Finished"));
    seq = log.events.size();
    ev.set_job_id(id);
    ev.set_seq(seq);
    *ev.mutable_time() = Now();
    // Stored before it is published: an event a watcher has seen is never lost to a crash. Under mu_, so the
    // store receives every job's events in seq order.
    if (store_ != nullptr) {
      if (absl::Status st = store_->AppendEvent(ev); !st.ok()) return st;
    }
    log.events.push_back(std::move(ev));
    log.closed = last;
    waiters.swap(log.waiters);
    if (last) TrimLocked(&log);
  }
  // Waiters (StreamJob reactors) call Next from inside the callback: they must run without mu_ held.
  Wake(waiters);
  return seq;
}

absl::StatusOr<EventLog::Poll> EventLog::Next(const std::string& id, uint64_t seq, sinkscope::v1::JobEvent* out,
                                              std::function<void()> notify) {
  std::lock_guard<std::mutex> l(mu_);
  absl::StatusOr<Log*> found = FindLocked(id);
  if (!found.ok()) return found.status();
  Log& log = **found;
  if (seq < log.events.size()) {
    *out = log.events[seq];
    return Poll::kEvent;
  }
  if (log.closed) return Poll::kEnd;
  if (stopping_)
    return absl::UnavailableError(
        absl::StrCat("server shutting down: job ", id, " continues after the restart (re-attach from seq ", seq, ")"));
  log.waiters.push_back(std::move(notify));
  return Poll::kWait;
}

absl::StatusOr<std::vector<sinkscope::v1::JobEvent>> EventLog::Events(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  absl::StatusOr<Log*> found = FindLocked(id);
  if (!found.ok()) return found.status();
  if (!(*found)->closed) return absl::FailedPreconditionError(absl::StrCat("job ", id, " has not finished"));
  return (*found)->events;
}

uint64_t EventLog::size(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = logs_.find(id);
  if (it != logs_.end()) return it->second.events.size();
  // Not in memory: counted in the store rather than loaded (ListJobs asks this for every job of a page).
  if (store_ == nullptr) return 0;
  absl::StatusOr<uint64_t> n = store_->CountEvents(id);
  return n.ok() ? *n : 0;
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

void EventLog::Shutdown() {
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    for (auto& [id, log] : logs_) {
      for (auto& w : log.waiters) waiters.push_back(std::move(w));
      log.waiters.clear();
    }
  }
  Wake(waiters);
}

}  // namespace sinkscope::server
