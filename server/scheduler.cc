#include "server/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;

namespace {
// Runs before `b`: higher priority first, then earlier submission.
bool Ahead(int32_t a_priority, uint64_t a_order, int32_t b_priority, uint64_t b_order) {
  return a_priority != b_priority ? a_priority > b_priority : a_order < b_order;
}
}  // namespace

Scheduler::Scheduler(int32_t max_queued, RunFn run, StateFn on_state)
    : max_queued_(max_queued), run_(std::move(run)), on_state_(std::move(on_state)) {}

Scheduler::~Scheduler() { Shutdown(); }

int32_t Scheduler::PositionLocked(const Device& d, const Waiting& w) const {
  int32_t ahead = 0;
  for (const Waiting& o : d.queue)
    ahead += &o != &w && Ahead(o.ticket.priority, o.order, w.ticket.priority, w.order);
  return ahead;
}

int32_t Scheduler::QueuedLocked() const {
  int32_t n = 0;
  for (const auto& [name, d] : devices_) n += static_cast<int32_t>(d.queue.size());
  return n;
}

absl::StatusOr<int32_t> Scheduler::Enqueue(Ticket job, const std::function<absl::Status(int32_t)>& on_queued) {
  std::unique_lock<std::mutex> l(mu_);
  if (!accepting_) return absl::UnavailableError("server is shutting down");
  if (const int32_t waiting = QueuedLocked(); waiting >= max_queued_ && !job.admitted)
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full (", waiting, " jobs waiting, limit ", max_queued_, ")"));
  const std::string device = job.device;
  Device& d = devices_[device];
  d.queue.push_back(Waiting{std::move(job), next_order_++});
  const int32_t position = PositionLocked(d, d.queue.back());
  if (absl::Status st = on_queued(position); !st.ok()) {
    d.queue.pop_back();
    return st;
  }
  // Workers start with the first job of their device: the devices in use are known only once models load.
  if (!d.worker.joinable()) d.worker = std::thread([this, device] { WorkerLoop(device); });
  l.unlock();
  cv_.notify_all();
  return position;
}

absl::Status Scheduler::Cancel(const std::string& id) {
  Ticket removed;
  {
    std::lock_guard<std::mutex> l(mu_);
    bool found = false;
    for (auto& [name, d] : devices_) {
      auto it = std::find_if(d.queue.begin(), d.queue.end(), [&](const Waiting& w) { return w.ticket.id == id; });
      if (it != d.queue.end()) {
        removed = std::move(it->ticket);
        d.queue.erase(it);
        found = true;
        break;
      }
      if (d.running && d.running->ticket.id == id) {
        if (!d.running->cancel) {
          d.running->reason = absl::CancelledError("cancelled by client");
          d.running->cancel = true;  // the worker stops at the next layer boundary and reports CANCELLED
        }
        spdlog::info("job {}: cancel requested while running", id);
        return absl::OkStatus();
      }
    }
    if (!found) return absl::NotFoundError(absl::StrCat("job ", id, " is not queued or running"));
  }
  cv_.notify_all();  // Drain may be waiting for this queue to empty
  on_state_(id, v1::JOB_STATE_CANCELLED, absl::CancelledError("cancelled by client"));
  return absl::OkStatus();
}

int32_t Scheduler::QueuePosition(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [name, d] : devices_)
    for (const Waiting& w : d.queue)
      if (w.ticket.id == id) return PositionLocked(d, w);
  return -1;
}

int32_t Scheduler::queued() const {
  std::lock_guard<std::mutex> l(mu_);
  return QueuedLocked();
}

int32_t Scheduler::running() const {
  std::lock_guard<std::mutex> l(mu_);
  int32_t n = 0;
  for (const auto& [name, d] : devices_) n += d.running != nullptr;
  return n;
}

void Scheduler::SetPaused(bool paused) {
  {
    std::lock_guard<std::mutex> l(mu_);
    paused_ = paused;
  }
  cv_.notify_all();
}

bool Scheduler::paused() const {
  std::lock_guard<std::mutex> l(mu_);
  return paused_;
}

void Scheduler::Drain() {
  std::unique_lock<std::mutex> l(mu_);
  accepting_ = false;
  paused_ = false;
  cv_.notify_all();
  cv_.wait(l, [&] {
    if (stopping_) return true;
    for (const auto& [name, d] : devices_)
      if (!d.queue.empty() || d.running) return false;
    return true;
  });
}

void Scheduler::Shutdown(StopMode mode) {
  const bool keep = mode == StopMode::kKeep;
  std::vector<Ticket> dropped;
  std::vector<std::thread*> workers;
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    accepting_ = false;
    for (auto& [name, d] : devices_) {
      if (!keep) {
        for (Waiting& w : d.queue) dropped.push_back(std::move(w.ticket));
      }
      d.queue.clear();
      if (d.running && !d.running->cancel) {
        d.running->reason = keep ? absl::UnavailableError("server shutting down")
                                 : absl::CancelledError("server shutting down");
        d.running->interrupt = keep;
        d.running->cancel = true;
      }
      if (d.worker.joinable()) workers.push_back(&d.worker);  // devices_ gains no entry once accepting_ is false
    }
  }
  cv_.notify_all();
  for (const Ticket& t : dropped)
    on_state_(t.id, v1::JOB_STATE_CANCELLED, absl::CancelledError("server shutting down"));
  for (std::thread* w : workers) w->join();
}

void Scheduler::WorkerLoop(const std::string& device) {
  for (;;) {
    std::shared_ptr<Running> job;
    {
      std::unique_lock<std::mutex> l(mu_);
      Device& d = devices_.at(device);
      cv_.wait(l, [&] { return stopping_ || (!paused_ && !d.queue.empty()); });
      if (stopping_) return;
      auto next = std::min_element(d.queue.begin(), d.queue.end(), [](const Waiting& a, const Waiting& b) {
        return Ahead(a.ticket.priority, a.order, b.ticket.priority, b.order);
      });
      Ticket t = std::move(next->ticket);
      d.queue.erase(next);
      if (Clock::now() > t.deadline) {
        l.unlock();
        on_state_(t.id, v1::JOB_STATE_CANCELLED, absl::DeadlineExceededError("deadline passed while queued"));
        cv_.notify_all();
        continue;
      }
      job = std::make_shared<Running>();
      job->ticket = std::move(t);
      d.running = job;
    }
    RunOne(job);
    {
      // Cleared only after the end was reported, so Cancel finds the job until its record is final.
      std::lock_guard<std::mutex> l(mu_);
      devices_.at(device).running.reset();
    }
    cv_.notify_all();
  }
}

void Scheduler::RunOne(const std::shared_ptr<Running>& job) {
  const std::string& id = job->ticket.id;
  on_state_(id, v1::JOB_STATE_RUNNING, absl::OkStatus());
  const job::CancelCheck cancel = [job]() -> absl::Status {
    if (job->cancel) return job->reason;
    if (Clock::now() > job->ticket.deadline) return absl::DeadlineExceededError("job deadline exceeded");
    return absl::OkStatus();
  };
  const absl::Status st = run_(job->ticket, cancel);
  const bool cancelled =
      st.code() == absl::StatusCode::kCancelled || st.code() == absl::StatusCode::kDeadlineExceeded;
  // Stopped by Shutdown(kKeep): the job is not over, it runs again after the restart. `interrupt` was written
  // before `cancel`, which the engine had to read to stop; the engine may add context to the message, not the code.
  const bool interrupted = !st.ok() && job->cancel && job->interrupt && st.code() == job->reason.code();
  on_state_(id,
            st.ok()        ? v1::JOB_STATE_SUCCEEDED
            : interrupted ? v1::JOB_STATE_INTERRUPTED
            : cancelled   ? v1::JOB_STATE_CANCELLED
                          : v1::JOB_STATE_FAILED,
            st);
}

}  // namespace sinkscope::server
