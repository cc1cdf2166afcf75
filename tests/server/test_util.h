// Helpers shared by the server test files: shell commands, tiny checkpoints, and a spawned sinkscoped process.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace sinkscope::server_test {

// Runs `cmd` with /bin/sh, returns its stdout; *rc gets the exit status.
std::string Shell(const std::string& cmd, int* rc = nullptr);

// SubmitJob with an optional idempotency key: the job id, or the call's status (same code and message).
absl::StatusOr<std::string> SubmitSpec(sinkscope::v1::Sinkscope::Stub* stub, const sinkscope::v1::JobSpec& spec,
                                       const std::string& idempotency_key = "");

// StreamJob from event `from` to the end of the stream (deadline `seconds`): the events, in order. `read`, if given,
// counts them as they arrive (a watcher thread is attached once it has read one). The final status goes to `status`
// when given; otherwise it is expected to be OK.
std::vector<sinkscope::v1::JobEvent> StreamJobEvents(sinkscope::v1::Sinkscope::Stub* stub, const std::string& id,
                                                     uint64_t from, int seconds, grpc::Status* status = nullptr,
                                                     std::atomic<size_t>* read = nullptr);

// GetJob, expected to succeed (a failure is reported with the id).
sinkscope::v1::Job GetJobOk(sinkscope::v1::Sinkscope::Stub* stub, const std::string& id);

// Asks grpc.health.v1 on `channel` about each service name and expects SERVING exactly where the pair says true.
void ExpectHealth(const std::shared_ptr<grpc::Channel>& channel,
                  const std::vector<std::pair<std::string, bool>>& serving);

// A random tiny Llama checkpoint (tests/reference/make_tiny_llama.py: 3 layers, d=64, GQA 4/2, vocab 4096,
// context 512, 2 shards) with the shipped tokenizer. attention: rope | nope | qk_norm_nope ...
void MakeModel(const std::filesystem::path& dir, const std::string& attention, int seed);

// A fresh directory under the test temp dir, removed by the caller when done.
std::filesystem::path TempDir(const std::string& tag);

// The built sinkscoped, started with `args` (plus --listen 127.0.0.1:0 unless args name --listen, and --port_file),
// logging into <dir>/<name>.log. Stop() sends SIGTERM and waits; the destructor kills what is left.
class SpawnedServer {
 public:
  SpawnedServer(const std::filesystem::path& dir, const std::string& name, const std::vector<std::string>& args);
  ~SpawnedServer();
  bool started() const { return port_ > 0; }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  std::string log() const;
  // SIGTERM, then waits up to `seconds`; true when it exited in time.
  bool Stop(double seconds = 10);
  void Kill9();

 private:
  std::filesystem::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace sinkscope::server_test
