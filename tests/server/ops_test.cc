// Operations (issue #11): /metrics answers while idle connections are open and its gauges return to 0, job
// timestamps finer than a second, an idempotency key reused with another body, JSON logs with one line per job
// transition, SIGHUP re-reading the tokens file, and flags errors / --help of the real binary.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/metrics.h"
#include "server/server.h"
#include "sinkscope/v1/service.grpc.pb.h"
#include "tests/server/state_fixture.h"
#include "tests/server/test_util.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using sinkscope::testing_util::WaitFor;

namespace sinkscope::server_test {
namespace {

class OpsTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(TempDir("ops"));
    MakeModel(*dir_ / "m", "rope", 9);
    std::ofstream(*dir_ / "models.yaml") << "models:\n  - {name: m, path: " << (*dir_ / "m").string() << "}\n";
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }
  static v1::SubmitJobRequest TinyJob(int last_id) {
    v1::SubmitJobRequest r;
    r.mutable_spec()->add_models("m");
    auto* ids = r.mutable_spec()->mutable_inputs()->mutable_token_ids()->add_prompts();
    for (int id : {1, 40, 41, last_id}) ids->add_ids(id);
    r.mutable_spec()->add_analyses()->mutable_sink_rate();
    return r;
  }
  static grpc::Status Submit(v1::Sinkscope::Stub* stub, const v1::SubmitJobRequest& req, std::string* id,
                             const std::string& token = "") {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::SubmitJobResponse resp;
    grpc::Status st = stub->SubmitJob(&ctx, req, &resp);
    *id = resp.job_id();
    return st;
  }
  static void StreamToEnd(v1::Sinkscope::Stub* stub, const std::string& id, const std::string& token = "") {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::StreamJobRequest req;
    req.set_job_id(id);
    auto reader = stub->StreamJob(&ctx, req);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
    }
    EXPECT_TRUE(reader->Finish().ok()) << id;
  }

  static fs::path* dir_;
};
fs::path* OpsTest::dir_ = nullptr;

// A TCP connection to 127.0.0.1:port that sends nothing (what stalled the old one-at-a-time endpoint).
int IdleConnection(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

TEST_F(OpsTest, MetricsGaugesTimestampsAndReusedKeys) {
  server::ServerConfig cfg;
  cfg.models = {{"m", (*dir_ / "m").string(), "float32", "cpu", "", true, ""}};
  server::ServerOptions o;
  o.wait_for_models = true;
  o.compute_threads = 1;
  o.metrics_listen = "127.0.0.1:0";
  auto s = server::Server::Start(o, cfg);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_GT((*s)->metrics().port(), 0);
  auto stub = v1::Sinkscope::NewStub(grpc::CreateChannel((*s)->address(), grpc::InsecureChannelCredentials()));

  // The memory budgets default to shares of the model's device: half (per forward) and a quarter (residual streams)
  // of the host's memory less the resident weights; `info` says they are per model, the model shows them.
  {
    grpc::ClientContext ctx;
    v1::ServerInfo info;
    ASSERT_TRUE(stub->GetServerInfo(&ctx, {}, &info).ok());
    EXPECT_TRUE(info.limits().forward_memory_per_model());
    EXPECT_TRUE(info.limits().residual_memory_per_model());
    EXPECT_EQ(info.limits().forward_memory_bytes(), 0);
    grpc::ClientContext mctx;
    v1::GetModelRequest mreq;
    mreq.set_name("m");
    v1::ModelInfo m;
    ASSERT_TRUE(stub->GetModel(&mctx, mreq, &m).ok());
    const int64_t host = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    EXPECT_EQ(m.device_memory_bytes(), host);
    ASSERT_GT(m.weight_bytes(), 0);
    EXPECT_EQ(m.forward_memory_bytes(), (host - m.weight_bytes()) / 2);
    EXPECT_EQ(m.residual_memory_bytes(), (host - m.weight_bytes()) / 4);
  }

  v1::SubmitJobRequest req = TinyJob(42);
  req.set_idempotency_key("k1");
  std::string id, again, other;
  ASSERT_TRUE(Submit(stub.get(), req, &id).ok());
  StreamToEnd(stub.get(), id);
  ASSERT_TRUE(Submit(stub.get(), req, &again).ok());  // a retry: the same job
  EXPECT_EQ(again, id);
  v1::SubmitJobRequest changed = TinyJob(43);
  changed.set_idempotency_key("k1");
  const grpc::Status reused = Submit(stub.get(), changed, &other);
  EXPECT_EQ(reused.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_TRUE(absl::StrContains(reused.error_message(), "different spec")) << reused.error_message();

  // Timestamps below the second (protobuf's TimeUtil::GetCurrentTime has whole seconds): three zero nanos
  // fields by chance are ~1e-18 likely.
  auto job = (*s)->jobs().Get(id);
  ASSERT_TRUE(job.ok());
  EXPECT_NE(job->submitted_at().nanos() + job->started_at().nanos() + job->finished_at().nanos(), 0);

  // The gauges come back to 0 once the job is over.
  const std::string text = (*s)->metrics().Serialize();
  EXPECT_TRUE(absl::StrContains(text, "sinkscope_state{what=\"jobs_running\"} 0")) << text;
  EXPECT_TRUE(absl::StrContains(text, "sinkscope_state{what=\"jobs_queued\"} 0")) << text;

  // Three idle connections do not hold up a scrape.
  std::vector<int> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(IdleConnection((*s)->metrics().port()));
  int rc = 0;
  const std::string url = absl::StrCat("http://127.0.0.1:", (*s)->metrics().port());
  const std::string scraped = Shell(absl::StrCat("curl -sS --max-time 3 ", url, "/metrics"), &rc);
  EXPECT_EQ(rc, 0) << scraped;
  EXPECT_TRUE(absl::StrContains(scraped, "sinkscope_jobs_total{outcome=\"succeeded\"} 1")) << scraped;
  EXPECT_EQ(Shell(absl::StrCat("curl -s -o /dev/null -w '%{http_code}' --max-time 3 ", url, "/nope")), "404");
  for (int fd : idle) close(fd);
  // The metrics port is not shared either: a second endpoint on it fails.
  auto clash = server::Metrics::Create(absl::StrCat("127.0.0.1:", (*s)->metrics().port()));
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable) << clash.status();
}

TEST_F(OpsTest, JsonLogsSighupReloadsTokensAndFlagErrors) {
  const fs::path tokens = *dir_ / "tokens.yaml";
  std::ofstream(tokens) << "tokens:\n  - {principal: alice, role: user, token: alice-token-1}\n";
  SpawnedServer server(*dir_, "json", {"--config", (*dir_ / "models.yaml").string(), "--log_format", "json",
                                       "--tokens_file", tokens.string()});
  ASSERT_TRUE(server.started()) << server.log();
  auto stub = v1::Sinkscope::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  std::string id;
  ASSERT_TRUE(WaitFor([&] { return Submit(stub.get(), TinyJob(42), &id, "alice-token-1").ok(); }));
  StreamToEnd(stub.get(), id, "alice-token-1");

  const auto can_list = [&](const std::string& token) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::ListModelsResponse r;
    return stub->ListModels(&ctx, {}, &r).error_code();
  };
  // SIGHUP: alice's token is revoked and carol's added ...
  std::ofstream(tokens) << "tokens:\n  - {principal: carol, role: user, token: carol-token-2}\n";
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return can_list("carol-token-2") == grpc::StatusCode::OK; }, 10)) << server.log();
  EXPECT_EQ(can_list("alice-token-1"), grpc::StatusCode::UNAUTHENTICATED);
  // ... and a file that no longer parses leaves the tokens in use.
  std::ofstream(tokens) << "tokens: [{principal: dave, role: owner, token: dave-token-3}]\n";
  kill(server.pid(), SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return absl::StrContains(server.log(), "tokens not reloaded"); }, 10)) << server.log();
  EXPECT_EQ(can_list("carol-token-2"), grpc::StatusCode::OK);
  stub.reset();
  ASSERT_TRUE(server.Stop());

  // Every line of ours is one JSON object; the job's transitions carry who, what, how long and how it ended.
  std::map<std::string, nlohmann::json> by_state;
  int objects = 0;
  for (const auto line : absl::StrSplit(server.log(), '\n')) {
    if (!absl::StartsWith(line, "{")) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << line;
    ASSERT_TRUE(j.contains("ts") && j.contains("level") && j.contains("msg")) << line;
    ++objects;
    if (j.value("event", "") == "job" && j.value("job", "") == id) by_state[j["state"]] = j;
  }
  EXPECT_GT(objects, 5);
  for (const char* st : {"QUEUED", "RUNNING", "SUCCEEDED"}) {
    ASSERT_TRUE(by_state.count(st)) << st << "\n" << server.log();
    EXPECT_EQ(by_state[st]["principal"], "alice") << st;
    EXPECT_EQ(by_state[st]["models"], nlohmann::json::array({"m"})) << st;
  }
  const nlohmann::json& done = by_state["SUCCEEDED"];
  EXPECT_EQ(done["outcome"], "ok");
  EXPECT_TRUE(done["run_seconds"].is_number() && done["queue_seconds"].is_number()) << done.dump();

  // Flag errors are clear, and --help lists the flags.
  int rc = 0;
  std::string out = Shell(absl::StrCat(SINKSCOPED_PATH, " --config ", (*dir_ / "models.yaml").string(),
                                       " --tokens_file ", (*dir_ / "absent.yaml").string(), " 2>&1"),
                          &rc);
  EXPECT_EQ(rc, 2) << out;  // a configuration error: not worth a restart
  EXPECT_TRUE(absl::StrContains(out, "tokens file") && absl::StrContains(out, "absent.yaml")) << out;
  out = Shell(absl::StrCat(SINKSCOPED_PATH, " --config x.yaml --log_format xml 2>&1"), &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_TRUE(absl::StrContains(out, "'xml' is not text or json")) << out;
  out = Shell(absl::StrCat(SINKSCOPED_PATH, " --help 2>&1"));
  for (const char* flag : {"--config", "--listen", "--state_dir", "--tokens_file", "--tls_cert", "--log_format",
                           "--metrics_listen", "Example:"})
    EXPECT_TRUE(absl::StrContains(out, flag)) << flag << "\n" << out;
}

}  // namespace
}  // namespace sinkscope::server_test
