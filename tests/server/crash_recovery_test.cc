// kill -9 in the middle of a job loses nothing that was accepted. The real sinkscoped binary with --state_dir:
// 3 jobs finish, 1 runs, 2 wait; kill -9; a new process on the same directory accounts for every job: the
// finished ones byte for byte (record and events), the running one INTERRUPTED then re-queued and finished (its
// first run's events kept), the waiting ones finished; idempotency keys still answer.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "tests/server/state_fixture.h"
#include "tests/server/test_util.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using sinkscope::testing_util::WaitFor;

namespace {

// A client of a spawned sinkscoped (test_util.h).
class Client {
 public:
  explicit Client(const sinkscope::server_test::SpawnedServer& server)
      : stub_(v1::Sinkscope::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()))) {}

  absl::StatusOr<std::string> Submit(const v1::JobSpec& spec, const std::string& key = "") {
    return sinkscope::server_test::SubmitSpec(stub_.get(), spec, key);
  }
  // Every event until Finished, serialized deterministically (what "identical" means here).
  std::vector<std::string> Stream(const std::string& id, std::vector<v1::JobEvent>* events = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    v1::StreamJobRequest req;
    req.set_job_id(id);
    auto reader = stub_->StreamJob(&ctx, req);
    std::vector<std::string> out;
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
      out.push_back(sinkscope::testing_util::Canon(ev));
      if (events) events->push_back(ev);
    }
    EXPECT_TRUE(reader->Finish().ok()) << id;
    return out;
  }
  v1::Job Get(const std::string& id) { return sinkscope::server_test::GetJobOk(stub_.get(), id); }

 private:
  std::unique_ptr<v1::Sinkscope::Stub> stub_;
};

using Fixture = sinkscope::testing_util::StateTest;  // for its job specs and models

TEST_F(Fixture, KillNineLosesNothingAccepted) {
  const fs::path dir = sinkscope::server_test::TempDir("crash");
  const auto& models = sinkscope::testing_util::TinyModelsDir();
  std::ofstream(dir / "c.yaml") << "models:\n  - {name: tiny-rope, path: " << (models / "rope").string()
                                << "}\n  - {name: tiny-nope, path: " << (models / "nope").string()
                                << "}\ndatasets_dir: " << SINKSCOPE_SOURCE_DIR << "/models/datasets\n"
                                << "limits: {max_prompts_per_job: 1000, max_tokens_per_prompt: 256}\n";
  const std::vector<std::string> args = {"--config", (dir / "c.yaml").string(), "--state_dir",
                                         (dir / "state").string()};

  std::vector<std::string> done;
  std::map<std::string, std::string> records;
  std::map<std::string, std::vector<std::string>> streams;
  v1::JobSpec per_prompt = QuickJob();
  per_prompt.set_per_prompt(true);
  const v1::JobSpec finished_specs[] = {QuickJob(), QuickJob("tiny-nope"), per_prompt};
  std::string slow, q1, q2;
  size_t slow_events_before = 0;
  {
    sinkscope::server_test::SpawnedServer first_server(dir, "first", args);
    ASSERT_TRUE(first_server.started()) << first_server.log();
    Client first(first_server);
    // Submissions are refused until their model is loaded (the models load in parallel, each at its own pace).
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<std::string> id;
      const std::string key = i == 0 ? "key-done" : "";
      ASSERT_TRUE(WaitFor([&] { return (id = first.Submit(finished_specs[i], key)).ok(); }, 120))
          << id.status() << first_server.log();
      done.push_back(*id);
    }
    for (const auto& d : done) {
      streams[d] = first.Stream(d);
      records[d] = sinkscope::testing_util::Canon(first.Get(d));
    }
    slow = *first.Submit(SlowJob());
    ASSERT_TRUE(WaitFor([&] {
      const v1::Job j = first.Get(slow);
      return j.state() == v1::JOB_STATE_RUNNING && j.num_events() >= 3;
    }));
    // Not identical to a finished job: that would be answered from the result cache, never queued.
    v1::JobSpec q1_spec = QuickJob(), q2_spec = QuickJob("tiny-nope");
    q1_spec.mutable_analyses(0)->mutable_sink_rate()->set_tau(0.35);
    q2_spec.mutable_analyses(0)->mutable_sink_rate()->set_tau(0.4);
    q1 = *first.Submit(q1_spec, "key-q1");
    q2 = *first.Submit(q2_spec);
    EXPECT_EQ(first.Get(q1).state(), v1::JOB_STATE_QUEUED);
    EXPECT_EQ(first.Get(q2).state(), v1::JOB_STATE_QUEUED);
    slow_events_before = first.Get(slow).num_events();
    EXPECT_EQ(first.Get(slow).state(), v1::JOB_STATE_RUNNING);
    first_server.Kill9();
  }

  sinkscope::server_test::SpawnedServer second_server(dir, "second", args);
  ASSERT_TRUE(second_server.started()) << second_server.log();
  Client second(second_server);
  for (const auto& d : done) {
    EXPECT_EQ(sinkscope::testing_util::Canon(second.Get(d)), records[d]) << d;
    EXPECT_EQ(second.Stream(d), streams[d]) << d;
  }
  std::vector<v1::JobEvent> slow_events;
  second.Stream(slow, &slow_events);
  ASSERT_FALSE(slow_events.empty());
  EXPECT_EQ(slow_events.back().finished().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_GE(slow_events.size(), slow_events_before);
  EXPECT_EQ(sinkscope::testing_util::CountStarted(slow_events), 2);  // the first run's events, then the second's
  for (size_t i = 0; i < slow_events.size(); ++i) EXPECT_EQ(slow_events[i].seq(), i);
  EXPECT_NE(second_server.log().find(absl::StrCat("job ", slow, ": interrupted before the restart")),
            std::string::npos)
      << second_server.log();
  for (const auto& q : {q1, q2}) {
    std::vector<v1::JobEvent> evs;
    second.Stream(q, &evs);
    ASSERT_FALSE(evs.empty());
    EXPECT_EQ(evs.back().finished().state(), v1::JOB_STATE_SUCCEEDED) << q;
    EXPECT_EQ(second.Get(q).state(), v1::JOB_STATE_SUCCEEDED);
  }
  v1::JobSpec q1_again = QuickJob();
  q1_again.mutable_analyses(0)->mutable_sink_rate()->set_tau(0.35);
  // Keys survive the crash.
  const std::tuple<v1::JobSpec, std::string, std::string> retries[] = {{q1_again, "key-q1", q1},
                                                                        {finished_specs[0], "key-done", done[0]}};
  for (const auto& [spec, key, id] : retries) {
    const absl::StatusOr<std::string> again = second.Submit(spec, key);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again, id) << key;
  }
  EXPECT_TRUE(second_server.Stop(30));
  EXPECT_NE(second_server.log().find("shutdown complete"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
