// The engine of `sinkscope batch` (batch.h): plans a rerun from the manifest, keeps --concurrency jobs in flight over
// the replicas, streams each job into its files and records it in the manifest. Internal to the client.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "client/batch.h"
#include "client/batch_file.h"
#include "client/batch_manifest.h"
#include "client/progress.h"

namespace sinkscope::client {

// What a rerun does with a job.
enum class Action { kNone, kSubmit, kAttach };

class BatchRunner {
 public:
  BatchRunner(const Credentials& cred, std::vector<Replica> replicas, const BatchOptions& o, std::vector<BatchJob> jobs,
              Manifest manifest)
      : cred_(cred),
        replicas_(std::move(replicas)),
        o_(o),
        jobs_(std::move(jobs)),
        m_(std::move(manifest)),
        progress_(o.progress, std::cerr) {}

  int Run();

 private:
  std::string ManifestPath() const { return (std::filesystem::path(o_.out_dir) / "manifest.json").string(); }
  std::string EventsPath(size_t i) const {
    return (std::filesystem::path(o_.out_dir) / "jobs" / (jobs_[i].name + ".jsonl")).string();
  }
  std::string CsvPath(size_t i) const { return (std::filesystem::path(o_.out_dir) / "jobs" / (jobs_[i].name + ".csv")).string(); }

  void Plan();
  void Worker();
  void Process(size_t i);
  // Streams job i from its server into its files; the stream's final status (OK once Finished arrived).
  grpc::Status Stream(size_t i);
  bool Submit(size_t i);
  Client& ClientFor(const std::string& target, const std::string& tls_name);
  // Job i's server (from the manifest) and its job id there.
  Client& JobClient(size_t i, std::string* job_id);
  const Replica* PickReplica(const std::string& avoid);
  void SaveLocked();
  void Say(const std::string& line);
  std::string StatusText();
  void CancelSubmitted();

  Credentials cred_;
  std::vector<Replica> replicas_;
  BatchOptions o_;
  std::vector<BatchJob> jobs_;
  Manifest m_;
  ProgressLine progress_;
  std::vector<Action> action_;
  size_t next_ = 0;
  size_t skipped_ = 0;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Client>> clients_;
  std::map<std::string, int> inflight_;
  std::map<std::string, std::chrono::steady_clock::time_point> down_until_;
  std::set<grpc::ClientContext*> active_;
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace sinkscope::client
