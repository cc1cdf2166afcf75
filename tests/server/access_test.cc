// Who may do what (issue #11): Bearer tokens and roles, TLS and mutual TLS with certificates made here by the
// openssl CLI, the listen-address policy and port exclusivity. In-process servers on 127.0.0.1.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/server.h"
#include "sinkscope/v1/service.grpc.pb.h"
#include "tests/server/test_util.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;

namespace sinkscope::server_test {
namespace {

class AccessTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(TempDir("access"));
    MakeModel(*dir_ / "m", "rope", 5);
    // alice and bob are users (bob's token given by its SHA-256 only); root is an admin.
    std::ofstream(*dir_ / "tokens.yaml") << "tokens:\n"
                                         << "  - {principal: alice, role: user, token: alice-token-1}\n"
                                         << "  - {principal: bob, role: user, sha256: " << util::Sha256Hex("bob-token-2")
                                         << "}\n  - {principal: root, role: admin, token: root-token-3}\n";
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static server::ServerConfig Config() {
    server::ServerConfig c;
    c.models = {{"m", (*dir_ / "m").string(), "float32", "cpu", "tiny"}};
    return c;
  }
  static std::unique_ptr<server::Server> Start(server::ServerOptions o) {
    o.wait_for_models = true;
    o.compute_threads = 1;
    auto s = server::Server::Start(o, Config());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  // A client context carrying `token` (none when empty).
  static std::unique_ptr<grpc::ClientContext> As(const std::string& token) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }
  static v1::SubmitJobRequest TinyJob() {
    v1::SubmitJobRequest r;
    r.mutable_spec()->add_models("m");
    auto* ids = r.mutable_spec()->mutable_inputs()->mutable_token_ids()->add_prompts();
    for (int id : {1, 40, 41, 42}) ids->add_ids(id);
    r.mutable_spec()->add_analyses()->mutable_sink_rate();
    return r;
  }

  static fs::path* dir_;
};
fs::path* AccessTest::dir_ = nullptr;

TEST_F(AccessTest, TokensRolesAndOwnership) {
  server::ServerOptions o;
  o.listen = "127.0.0.1:0";
  o.tokens_file = (*dir_ / "tokens.yaml").string();
  auto s = Start(o);
  ASSERT_TRUE(s);
  auto ch = grpc::CreateChannel(s->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Sinkscope::NewStub(ch);
  v1::ListModelsResponse models;
  // No token, a wrong token, a malformed header: UNAUTHENTICATED with a message.
  grpc::Status st = stub->ListModels(As("").get(), {}, &models);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(st.error_message().find("requires a token"), std::string::npos) << st.error_message();
  EXPECT_EQ(stub->ListModels(As("definitely-not-valid").get(), {}, &models).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  {
    grpc::ClientContext basic;
    basic.AddMetadata("authorization", "Basic YWxpY2U=");
    EXPECT_EQ(stub->ListModels(&basic, {}, &models).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Health needs no token (probes).
  {
    auto health = grpc::health::v1::Health::NewStub(ch);
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckResponse h;
    ASSERT_TRUE(health->Check(&ctx, {}, &h).ok());
    EXPECT_EQ(h.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  // Server paths: admins only.
  ASSERT_TRUE(stub->ListModels(As("alice-token-1").get(), {}, &models).ok());
  EXPECT_TRUE(models.models(0).path().empty());
  ASSERT_TRUE(stub->ListModels(As("root-token-3").get(), {}, &models).ok());
  EXPECT_EQ(models.models(0).path(), (*dir_ / "m").string());

  // alice's job: hers and the admin's, not bob's.
  v1::SubmitJobResponse sub;
  ASSERT_TRUE(stub->SubmitJob(As("alice-token-1").get(), TinyJob(), &sub).ok());
  v1::GetJobRequest get;
  get.set_job_id(sub.job_id());
  v1::Job job;
  ASSERT_TRUE(stub->GetJob(As("alice-token-1").get(), get, &job).ok());
  EXPECT_EQ(job.submitted_by(), "alice");
  ASSERT_TRUE(stub->GetJob(As("root-token-3").get(), get, &job).ok());
  st = stub->GetJob(As("bob-token-2").get(), get, &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(st.error_message().find("another user"), std::string::npos) << st.error_message();
  v1::CancelJobRequest cancel;
  cancel.set_job_id(sub.job_id());
  v1::CancelJobResponse cancelled;
  EXPECT_EQ(stub->CancelJob(As("bob-token-2").get(), cancel, &cancelled).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  {
    v1::StreamJobRequest sr;
    sr.set_job_id(sub.job_id());
    auto ctx = As("bob-token-2");
    auto reader = stub->StreamJob(ctx.get(), sr);
    v1::JobEvent ev;
    EXPECT_FALSE(reader->Read(&ev));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {  // alice streams her job to its end
    v1::StreamJobRequest sr;
    sr.set_job_id(sub.job_id());
    auto ctx = As("alice-token-1");
    auto reader = stub->StreamJob(ctx.get(), sr);
    v1::JobEvent ev;
    int n = 0;
    while (reader->Read(&ev)) ++n;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_GT(n, 3);
  }
  // Listing: users see their own jobs, admins everyone's.
  ASSERT_TRUE(stub->SubmitJob(As("bob-token-2").get(), TinyJob(), &sub).ok());
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub->ListJobs(As("bob-token-2").get(), {}, &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).submitted_by(), "bob");
  ASSERT_TRUE(stub->ListJobs(As("root-token-3").get(), {}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 2);
}

TEST_F(AccessTest, TokensFileErrorsNameTheEntry) {
  for (const auto& [yaml, needle] : std::vector<std::pair<std::string, std::string>>{
           {"tokens: []", "non-empty list"},
           {"dG9rZW5zOiBbXQo=", "non-empty list"},  // not YAML at all (a base64 string)
           {"tokens: [{principal: a, role: root, token: 12345678}]", "tokens[0].role: 'root'"},
           {"tokens: [{principal: a, role: user}]", "exactly one of token and sha256"},
           {"tokens: [{principal: a, role: user, sha256: abc}]", "tokens[0].sha256"},
           {"tokens: [{principal: a, role: user, token: short}]", "shorter than 8"},
           {"tokens: [{role: user, token: 12345678}]", "tokens[0].principal"},
           {"tokens: [{principal: a, role: user, token: 12345678}, {principal: b, role: user, token: 12345678}]",
            "listed twice"}}) {
    auto t = server::TokenTable::Parse(yaml, "t.yaml");
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << yaml;
    EXPECT_NE(std::string(t.status().message()).find(needle), std::string::npos) << t.status();
  }
}

// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI.
void MakeCertificates(const fs::path& d) {
  const std::string cmds = absl::StrCat(
      "cd ", d.string(), " && ",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr && ",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext && ",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext ",
      "-out server.pem && ",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr && ",
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem 2>&1");
  int rc = 0;
  const std::string out = Shell(cmds + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
}

std::string Read(const fs::path& p) {
  std::stringstream ss;
  ss << std::ifstream(p).rdbuf();
  return ss.str();
}

grpc::StatusCode ListModelsOver(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("127.0.0.1");
  auto stub = v1::Sinkscope::NewStub(grpc::CreateCustomChannel(address, creds, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse r;
  return stub->ListModels(&ctx, {}, &r).error_code();
}

TEST_F(AccessTest, TlsAndMutualTls) {
  const fs::path d = *dir_ / "tls";
  fs::create_directories(d);
  MakeCertificates(d);
  grpc::SslCredentialsOptions trust;
  trust.pem_root_certs = Read(d / "ca.pem");
  {
    server::ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.tls_cert = (d / "server.pem").string();
    o.tls_key = (d / "server.key").string();
    auto s = Start(o);
    ASSERT_TRUE(s);
    EXPECT_EQ(ListModelsOver(s->address(), grpc::SslCredentials(trust)), grpc::StatusCode::OK);
    EXPECT_NE(ListModelsOver(s->address(), grpc::InsecureChannelCredentials()), grpc::StatusCode::OK);
  }
  {
    server::ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.tls_cert = (d / "server.pem").string();
    o.tls_key = (d / "server.key").string();
    o.tls_client_ca = (d / "ca.pem").string();
    auto s = Start(o);
    ASSERT_TRUE(s);
    EXPECT_NE(ListModelsOver(s->address(), grpc::SslCredentials(trust)), grpc::StatusCode::OK);  // no client cert
    grpc::SslCredentialsOptions mutual = trust;
    mutual.pem_private_key = Read(d / "client.key");
    mutual.pem_cert_chain = Read(d / "client.pem");
    EXPECT_EQ(ListModelsOver(s->address(), grpc::SslCredentials(mutual)), grpc::StatusCode::OK);
  }
  server::ServerOptions half;
  half.listen = "127.0.0.1:0";
  half.tls_cert = (d / "server.pem").string();
  auto s = server::Server::Start(half, Config());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AccessTest, RemoteListenNeedsTokensOrAnExplicitWaiver) {
  server::ServerOptions o;
  o.listen = "0.0.0.0:0";
  auto refused = server::Server::Start(o, Config());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(refused.status().message()).find("--tokens_file"), std::string::npos) << refused.status();
  o.insecure_allow_remote = true;
  EXPECT_TRUE(server::Server::Start(o, Config()).ok());
  o.insecure_allow_remote = false;
  o.tokens_file = (*dir_ / "tokens.yaml").string();
  EXPECT_TRUE(server::Server::Start(o, Config()).ok());
  EXPECT_TRUE(server::IsLoopback("127.0.0.1") && server::IsLoopback("localhost") && server::IsLoopback("[::1]"));
  EXPECT_FALSE(server::IsLoopback("0.0.0.0") || server::IsLoopback("10.1.2.3") || server::IsLoopback("[::]"));
}

TEST_F(AccessTest, ASecondServerOnATakenPortFailsToStart) {
  server::ServerOptions o;
  o.listen = "127.0.0.1:0";
  auto first = Start(o);
  ASSERT_TRUE(first);
  o.listen = first->address();
  auto second = server::Server::Start(o, Config());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

}  // namespace
}  // namespace sinkscope::server_test
