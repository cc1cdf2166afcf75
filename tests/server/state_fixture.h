// In-process sinkscoped over a --state_dir that outlives it: start, stop, start again on the same directory (a
// graceful restart: Server::Shutdown keeps queued jobs and interrupts the running one). Tiny generated models
// (tiny-rope, tiny-nope), made once per process.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/result_cache.h"
#include "server/server.h"
#include "sinkscope/v1/service.grpc.pb.h"
#include "tests/server/test_util.h"

namespace sinkscope::testing_util {

// Polls `done` every 20 ms for up to `seconds`; true once it holds.
template <typename F>
bool WaitFor(F done, double seconds = 30) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

// The models, generated on first use and removed when the process exits.
inline const std::filesystem::path& TinyModelsDir() {
  static std::filesystem::path* dir = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    dir = new std::filesystem::path(std::filesystem::path(::testing::TempDir()) /
                                    absl::StrCat("sinkscope-state-models-", getpid()));
    std::filesystem::create_directories(*dir);
    server_test::MakeModel(*dir / "rope", "rope", 1);
    server_test::MakeModel(*dir / "nope", "nope", 2);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(*dir, ec);
    });
  });
  return *dir;
}

class StateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_dir_ = std::filesystem::path(::testing::TempDir()) /
                 absl::StrCat("sinkscope-state-", getpid(), "-",
                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(state_dir_);
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(state_dir_);
  }

  static server::ServerConfig Config() {
    server::ServerConfig c;
    const auto& dir = TinyModelsDir();
    c.models = {{"tiny-rope", (dir / "rope").string(), "float32", "cpu", "random rope"},
                {"tiny-nope", (dir / "nope").string(), "float32", "cpu", "random nope"}};
    c.datasets_dir = std::string(SINKSCOPE_SOURCE_DIR) + "/models/datasets";
    c.limits.data_dir = c.datasets_dir;
    c.limits.max_tokens_per_prompt = 256;
    c.limits.max_prompts = 1000;
    return c;
  }

  // Starts a server over state_dir_ (durable) or in memory; returns once models are loaded and jobs recovered.
  void Start(const server::ServerConfig& cfg = Config(), bool durable = true) {
    server::ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.compute_threads = 1;
    o.wait_for_models = true;
    if (durable) o.state_dir = state_dir_.string();
    auto s = server::Server::Start(o, cfg);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    stub_ = sinkscope::v1::Sinkscope::NewStub(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  void Restart(const server::ServerConfig& cfg = Config()) {
    server_.reset();
    Start(cfg);
  }

  // A job of a few ms: two texts, sink rate and residual stats.
  static sinkscope::v1::JobSpec QuickJob(const std::string& model = "tiny-rope") {
    sinkscope::v1::JobSpec s;
    s.add_models(model);
    auto* t = s.mutable_inputs()->mutable_texts();
    t->add_texts("The quick brown fox jumps over the lazy dog.");
    t->add_texts("It was the best of times, it was the worst of times.");
    s.add_analyses()->mutable_sink_rate();
    s.add_analyses()->mutable_residual_stats();
    return s;
  }
  // A job of seconds on one thread: `prompts` prompts, perplexity with Q/K disruption and 4 control seeds.
  static sinkscope::v1::JobSpec SlowJob(int prompts = 300) {
    sinkscope::v1::JobSpec s;
    s.add_models("tiny-rope");
    s.mutable_inputs()->set_dataset("brown-heldout");
    s.mutable_inputs()->set_max_prompts(prompts);
    s.add_analyses()->mutable_sink_rate();
    auto* qk = s.add_analyses()->mutable_perplexity()->add_interventions()->mutable_qk_massive();
    for (uint64_t seed : {1, 2, 3, 4}) qk->add_control_seeds(seed);
    return s;
  }

  absl::StatusOr<std::string> Submit(const sinkscope::v1::JobSpec& spec, const std::string& key = "") {
    grpc::ClientContext ctx;
    sinkscope::v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    req.set_idempotency_key(key);
    sinkscope::v1::SubmitJobResponse resp;
    grpc::Status st = stub_->SubmitJob(&ctx, req, &resp);
    if (!st.ok()) return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    return resp.job_id();
  }

  // Every event of job `id` from `from` (test_util.h StreamJobEvents).
  std::vector<sinkscope::v1::JobEvent> Stream(const std::string& id, uint64_t from = 0,
                                              grpc::Status* status = nullptr, std::atomic<size_t>* read = nullptr) {
    return sinkscope::server_test::StreamJobEvents(stub_.get(), id, from, 300, status, read);
  }

  sinkscope::v1::Job Get(const std::string& id, grpc::Status* status = nullptr) {
    grpc::ClientContext ctx;
    sinkscope::v1::GetJobRequest req;
    req.set_job_id(id);
    sinkscope::v1::Job j;
    grpc::Status st = stub_->GetJob(&ctx, req, &j);
    if (status) *status = st;
    EXPECT_TRUE(st.ok() || status) << st.error_message();
    return j;
  }

  sinkscope::v1::ListJobsResponse List() {
    grpc::ClientContext ctx;
    sinkscope::v1::ListJobsResponse resp;
    EXPECT_TRUE(stub_->ListJobs(&ctx, sinkscope::v1::ListJobsRequest(), &resp).ok());
    return resp;
  }

  // Waits until the job runs and has emitted at least `events` events.
  bool WaitRunning(const std::string& id, uint64_t events = 3) {
    return WaitFor([&] {
      const sinkscope::v1::Job j = Get(id);
      return j.state() == sinkscope::v1::JOB_STATE_RUNNING && j.num_events() >= events;
    });
  }

  std::filesystem::path state_dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<sinkscope::v1::Sinkscope::Stub> stub_;
};

// Serialized with map entries in a fixed order: what "byte for byte" compares (gRPC's own serialization of a map
// field may order entries differently from one send to the next).
inline std::string Canon(const google::protobuf::Message& m) { return server::DeterministicBytes(m); }
inline std::vector<std::string> Canon(const std::vector<sinkscope::v1::JobEvent>& evs) {
  std::vector<std::string> out;
  for (const auto& e : evs) out.push_back(Canon(e));
  return out;
}

inline int CountStarted(const std::vector<sinkscope::v1::JobEvent>& evs) {
  int n = 0;
  for (const auto& e : evs) n += e.has_started();
  return n;
}

}  // namespace sinkscope::testing_util
