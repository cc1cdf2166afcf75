// Helpers shared by the server test files (see test_util.h).
#include "tests/server/test_util.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace fs = std::filesystem;

namespace sinkscope::server_test {

std::string Shell(const std::string& cmd, int* rc) {
  std::array<char, 4096> buf;
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  if (rc) *rc = WEXITSTATUS(st);
  return out;
}

absl::StatusOr<std::string> SubmitSpec(sinkscope::v1::Sinkscope::Stub* stub, const sinkscope::v1::JobSpec& spec,
                                       const std::string& idempotency_key) {
  grpc::ClientContext ctx;
  sinkscope::v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  req.set_idempotency_key(idempotency_key);
  sinkscope::v1::SubmitJobResponse resp;
  const grpc::Status st = stub->SubmitJob(&ctx, req, &resp);
  if (!st.ok()) return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  return resp.job_id();
}

std::vector<sinkscope::v1::JobEvent> StreamJobEvents(sinkscope::v1::Sinkscope::Stub* stub, const std::string& id,
                                                     uint64_t from, int seconds, grpc::Status* status,
                                                     std::atomic<size_t>* read) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  sinkscope::v1::StreamJobRequest req;
  req.set_job_id(id);
  req.set_from_seq(from);
  auto reader = stub->StreamJob(&ctx, req);
  std::vector<sinkscope::v1::JobEvent> evs;
  sinkscope::v1::JobEvent ev;
  while (reader->Read(&ev)) {
    evs.push_back(ev);
    if (read) ++*read;
  }
  const grpc::Status st = reader->Finish();
  if (status) *status = st;
  EXPECT_TRUE(st.ok() || status) << id << ": " << st.error_message();
  return evs;
}

sinkscope::v1::Job GetJobOk(sinkscope::v1::Sinkscope::Stub* stub, const std::string& id) {
  grpc::ClientContext ctx;
  sinkscope::v1::GetJobRequest req;
  req.set_job_id(id);
  sinkscope::v1::Job j;
  const grpc::Status st = stub->GetJob(&ctx, req, &j);
  EXPECT_TRUE(st.ok()) << id << ": " << st.error_message();
  return j;
}

void ExpectHealth(const std::shared_ptr<grpc::Channel>& channel,
                  const std::vector<std::pair<std::string, bool>>& serving) {
  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const auto& [svc, want] : serving) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(svc);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << svc;
    EXPECT_EQ(resp.status() == grpc::health::v1::HealthCheckResponse::SERVING, want) << svc;
  }
}

void MakeModel(const fs::path& dir, const std::string& attention, int seed) {
  int rc = 0;
  const std::string out = Shell(absl::StrCat(SINKSCOPE_PYTHON, " ", SINKSCOPE_SOURCE_DIR,
                                           "/tests/reference/make_tiny_llama.py --out ", dir.string(),
                                           " --layers 3 --hidden 64 --heads 4 --kv-heads 2 --vocab 4096 --max-pos 512",
                                           " --attention ", attention, " --shards 2 --seed ", seed, " 2>&1"),
                              &rc);
  ASSERT_EQ(rc, 0) << out;
  fs::copy_file(fs::path(SINKSCOPE_SOURCE_DIR) / "models/tokenizer/tokenizer.model", dir / "tokenizer.model",
                fs::copy_options::overwrite_existing);
}

fs::path TempDir(const std::string& tag) {
  const fs::path d = fs::path(testing::TempDir()) / absl::StrCat("sinkscope-", tag, "-", getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

SpawnedServer::SpawnedServer(const fs::path& dir, const std::string& name, const std::vector<std::string>& args)
    : log_(dir / (name + ".log")) {
  const fs::path port_file = dir / (name + ".port");
  fs::remove(port_file);
  std::vector<std::string> argv = {SINKSCOPED_PATH, "--threads", "1", "--port_file", port_file.string()};
  bool listen = false;
  for (const std::string& a : args) listen |= a.rfind("--listen", 0) == 0;
  if (!listen) argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
  argv.insert(argv.end(), args.begin(), args.end());
  pid_ = fork();
  if (pid_ == 0) {
    FILE* f = std::freopen(log_.c_str(), "w", stdout);
    if (f != nullptr) dup2(fileno(stdout), STDERR_FILENO);
    std::vector<char*> cargv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  // Listening happens before the models load; a server that refuses to start exits instead.
  for (int i = 0; i < 400 && port_ == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    std::ifstream(port_file) >> port_;
    int st = 0;
    if (port_ == 0 && waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      break;
    }
  }
}

SpawnedServer::~SpawnedServer() {
  if (pid_ > 0) Kill9();
}

std::string SpawnedServer::log() const {
  std::stringstream ss;
  ss << std::ifstream(log_).rdbuf();
  return ss.str();
}

bool SpawnedServer::Stop(double seconds) {
  if (pid_ <= 0) return true;
  kill(pid_, SIGTERM);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

void SpawnedServer::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int st = 0;
  waitpid(pid_, &st, 0);
  pid_ = -1;
}

}  // namespace sinkscope::server_test
