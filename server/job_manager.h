// Job manager: admission, priority queue (priority desc, FIFO within a priority), one worker per device running
// the engine, the in-memory event log of every job (gap-free seq), and live subscriptions for StreamJob.
// A watcher that connects late replays the stored events from any seq, then follows live ones: one code path for
// attach and reattach.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/plan.h"
#include "server/metrics.h"
#include "server/registry.h"
#include "sinkscope/v1/service.pb.h"

namespace sinkscope::server {

class JobManager {
 public:
  struct Options {
    int32_t max_queued_jobs = 64;
    int32_t max_finished_jobs = 1000;  // oldest finished jobs are forgotten beyond this
    job::RunLimits limits;
    std::string server_version;
    Metrics* metrics = nullptr;  // optional
  };

  JobManager(Options opts, const Registry* registry);
  ~JobManager();

  void Start();     // starts the worker
  void Shutdown();  // rejects new jobs, cancels queued and running ones, joins the worker

  absl::StatusOr<sinkscope::v1::SubmitJobResponse> Submit(const sinkscope::v1::SubmitJobRequest& req,
                                                           const std::string& principal);
  absl::StatusOr<sinkscope::v1::Job> Get(const std::string& id) const;
  absl::StatusOr<sinkscope::v1::ListJobsResponse> List(const sinkscope::v1::ListJobsRequest& req) const;
  absl::StatusOr<sinkscope::v1::JobState> Cancel(const std::string& id);

  enum class Poll { kEvent, kWait, kEnd };
  // Copies event `seq` of job `id` into *out (kEvent); or, if it does not exist yet, registers `notify` to be
  // called once when a new event arrives (kWait); or kEnd when the job is finished and seq is past its last event.
  absl::StatusOr<Poll> NextEvent(const std::string& id, uint64_t seq, sinkscope::v1::JobEvent* out,
                                 std::function<void()> notify);

  // Paused: queued jobs stay queued (submissions still accepted) until resumed. For maintenance and tests.
  void SetPaused(bool paused);
  bool paused() const;

  int32_t queued() const;
  int32_t running() const;

 private:
  struct Record;
  void WorkerLoop();
  void RunOne(const std::shared_ptr<Record>& rec);
  void Append(Record& rec, sinkscope::v1::JobEvent ev);  // requires mu_
  void Finish(Record& rec, sinkscope::v1::JobState state, const absl::Status& st);  // requires mu_
  void FlushNotify();  // runs notifications queued by Append, without holding mu_
  absl::StatusOr<sinkscope::v1::JobState> CancelLocked(const std::string& id);
  void Forget();  // requires mu_; drops the oldest finished jobs beyond max_finished_jobs
  int32_t QueuePosition(const Record& rec) const;  // requires mu_

  Options opts_;
  const Registry* registry_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Record>> jobs_;
  std::deque<std::string> order_;                           // submission order (for List, Forget)
  std::vector<std::shared_ptr<Record>> queue_;              // waiting jobs
  std::map<std::string, std::string> idempotency_;          // principal+key -> job id
  std::shared_ptr<Record> running_;
  std::vector<std::function<void()>> to_notify_;
  uint64_t next_submit_ = 0;
  bool stopping_ = false;
  bool paused_ = false;
  std::thread worker_;
};

}  // namespace sinkscope::server
