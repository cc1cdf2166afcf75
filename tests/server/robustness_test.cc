// A server that bad files and bad inputs cannot take down or fool (issue #11): weights checked at load (NaN/Inf,
// layers the config does not declare), a checkpoint truncated under a running server, a stalled model file (the
// others serve, SIGTERM exits), optional and relocated tokenizers, prompts beyond the context, edit positions,
// work caps, non-finite activations, far deadlines and re-attaching past the end.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "server/server.h"
#include "sinkscope/v1/service.grpc.pb.h"
#include "common/util/status_macros.h"
#include "tests/server/test_util.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;

namespace sinkscope::server_test {
namespace {

class RobustnessTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(TempDir("robust"));
    MakeModel(*dir_ / "good", "rope", 7);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  // A copy of the good model to break.
  static fs::path Copy(const std::string& name) {
    const fs::path d = *dir_ / name;
    fs::remove_all(d);
    fs::copy(*dir_ / "good", d, fs::copy_options::recursive);
    return d;
  }

  struct Running {
    std::unique_ptr<server::Server> server;
    std::unique_ptr<v1::Sinkscope::Stub> stub;
  };
  static Running Start(std::vector<server::ModelConfig> models, server::ServerConfig cfg = {}) {
    cfg.models = std::move(models);
    server::ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.wait_for_models = true;
    o.compute_threads = 1;
    auto s = server::Server::Start(o, cfg);
    EXPECT_TRUE(s.ok()) << s.status();
    Running r;
    if (!s.ok()) return r;
    r.server = *std::move(s);
    r.stub = v1::Sinkscope::NewStub(grpc::CreateChannel(r.server->address(), grpc::InsecureChannelCredentials()));
    return r;
  }
  static server::ModelConfig Model(const std::string& name, const fs::path& path) {
    return {name, path.string(), "float32", "cpu", ""};
  }

  static v1::JobSpec IdsJob(const std::string& model, std::vector<int> ids) {
    v1::JobSpec s;
    s.add_models(model);
    auto* p = s.mutable_inputs()->mutable_token_ids()->add_prompts();
    for (int id : ids) p->add_ids(id);
    s.add_analyses()->mutable_sink_rate();
    return s;
  }
  // Submits and streams to the end: the job's final event, or the submit error.
  static absl::StatusOr<v1::JobEvent> Run(v1::Sinkscope::Stub* stub, const v1::JobSpec& spec) {
    ASSIGN_OR_RETURN(const std::string id, SubmitSpec(stub, spec));
    grpc::ClientContext sctx;
    v1::StreamJobRequest sr;
    sr.set_job_id(id);
    auto reader = stub->StreamJob(&sctx, sr);
    v1::JobEvent ev, last;
    while (reader->Read(&ev)) last = ev;
    if (!reader->Finish().ok()) return absl::InternalError("stream failed");
    last.set_job_id(id);
    return last;
  }

  static fs::path* dir_;
};
fs::path* RobustnessTest::dir_ = nullptr;

// Overwrites the first 4 bytes of a tensor's data in a safetensors file of `dir` with a float32 NaN.
void PoisonTensor(const fs::path& dir, const std::string& tensor) {
  const std::string py = absl::StrCat(
      "import json,struct,glob,sys\n"
      "for f in sorted(glob.glob('", dir.string(), "/*.safetensors')):\n"
      "  b=bytearray(open(f,'rb').read()); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n])\n"
      "  if '", tensor, "' in h:\n"
      "    o=8+n+h['", tensor, "']['data_offsets'][0]; b[o:o+4]=struct.pack('<f',float('nan'))\n"
      "    open(f,'wb').write(b); sys.exit(0)\n"
      "sys.exit(1)\n");
  std::ofstream(dir / "poison.py") << py;
  int rc = 0;
  Shell(absl::StrCat(SINKSCOPE_PYTHON, " ", (dir / "poison.py").string()), &rc);
  ASSERT_EQ(rc, 0);
  fs::remove(dir / "poison.py");
}

TEST_F(RobustnessTest, BadWeightsFailTheirModelNamingTheTensorAndTheOthersServe) {
  const fs::path nan = Copy("nan");
  PoisonTensor(nan, "model.layers.1.mlp.up_proj.weight");
  const fs::path extra = Copy("extra");
  {  // config.json declares 2 layers; the weights have 3
    std::ifstream in(extra / "config.json");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string cfg = ss.str();
    const size_t p = cfg.find("\"num_hidden_layers\": 3");
    ASSERT_NE(p, std::string::npos) << cfg;
    cfg.replace(p, 22, "\"num_hidden_layers\": 2");
    std::ofstream(extra / "config.json") << cfg;
  }
  auto r = Start({Model("good", *dir_ / "good"), Model("nan", nan), Model("extra", extra)});
  ASSERT_TRUE(r.server);
  auto nan_info = r.server->registry().Get("nan");
  EXPECT_EQ(nan_info->state(), v1::MODEL_STATE_FAILED);
  EXPECT_NE(nan_info->error().find("model.layers.1.mlp.up_proj.weight has 1 non-finite"), std::string::npos)
      << nan_info->error();
  auto extra_info = r.server->registry().Get("extra");
  EXPECT_EQ(extra_info->state(), v1::MODEL_STATE_FAILED);
  EXPECT_NE(extra_info->error().find("num_hidden_layers=2"), std::string::npos) << extra_info->error();
  // Health: NOT_SERVING overall while a configured model is FAILED; per-model names tell which.
  ExpectHealth(grpc::CreateChannel(r.server->address(), grpc::InsecureChannelCredentials()),
               {{"", false},
                {"sinkscope.v1.Sinkscope", false},
                {"sinkscope.v1.Sinkscope/good", true},
                {"sinkscope.v1.Sinkscope/nan", false}});
  auto done = Run(r.stub.get(), IdsJob("good", {1, 40, 41, 42}));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->finished().state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(RobustnessTest, ACheckpointTruncatedUnderTheServerDoesNotCrashIt) {
  const fs::path d = Copy("truncated");
  auto r = Start({Model("t", d)});
  ASSERT_TRUE(r.server);
  for (const auto& f : fs::directory_iterator(d))
    if (f.path().extension() == ".safetensors") fs::resize_file(f.path(), fs::file_size(f.path()) / 3);
  auto done = Run(r.stub.get(), IdsJob("t", {1, 40, 41, 42, 43}));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->finished().state(), v1::JOB_STATE_SUCCEEDED);  // the weights were copied at load
}

TEST_F(RobustnessTest, TokenizerOptionalOrElsewhere) {
  const fs::path bare = Copy("bare");
  fs::remove(bare / "tokenizer.model");
  server::ModelConfig moved = Model("moved", bare);
  moved.tokenizer = (fs::path(SINKSCOPE_SOURCE_DIR) / "models/tokenizer").string();
  auto r = Start({Model("bare", bare), moved});
  ASSERT_TRUE(r.server);
  EXPECT_EQ(r.server->registry().Get("bare")->state(), v1::MODEL_STATE_READY);
  auto ids = Run(r.stub.get(), IdsJob("bare", {1, 40, 41, 42}));
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->finished().state(), v1::JOB_STATE_SUCCEEDED);
  v1::JobSpec text = IdsJob("bare", {1});
  text.mutable_inputs()->mutable_texts()->add_texts("Hello there");
  EXPECT_EQ(Run(r.stub.get(), text).status().code(), absl::StatusCode::kFailedPrecondition);
  text.set_models(0, "moved");
  auto moved_run = Run(r.stub.get(), text);
  ASSERT_TRUE(moved_run.ok()) << moved_run.status();
  EXPECT_EQ(moved_run->finished().state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(RobustnessTest, HonestInputsAndBoundedWork) {
  server::ServerConfig cfg;
  cfg.limits.max_planned_passes = 3;
  auto r = Start({Model("m", *dir_ / "good")}, cfg);
  ASSERT_TRUE(r.server);
  // Longer than the context (512): refused, or cut and counted when the job asks.
  std::vector<int> long_ids(600, 7);
  long_ids[0] = 1;
  auto refused = Run(r.stub.get(), IdsJob("m", long_ids));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(refused.status().message()).find("max_position_embeddings=512"), std::string::npos)
      << refused.status();
  v1::JobSpec cut = IdsJob("m", long_ids);
  cut.set_truncate_to_context(true);
  auto ok = Run(r.stub.get(), cut);
  ASSERT_TRUE(ok.ok()) << ok.status();
  v1::GetJobRequest get;
  get.set_job_id(ok->job_id());
  v1::Job job;
  grpc::ClientContext gctx;
  ASSERT_TRUE(r.stub->GetJob(&gctx, get, &job).ok());
  EXPECT_EQ(job.summary().models(0).truncated_prompts(), 1);
  // Edit positions must exist in the prompt.
  v1::JobSpec edit = IdsJob("m", {1, 2, 3, 4});
  auto* e = edit.add_analyses()->mutable_perplexity()->add_interventions()->mutable_edits()->add_edits();
  e->set_hook("blocks.0.hook_resid_post");
  e->set_op(v1::EDIT_OP_ZERO);
  e->add_positions(10);
  auto bad_edit = Run(r.stub.get(), edit);
  EXPECT_EQ(bad_edit.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad_edit.status().message()).find("10 is outside every prompt of model m (the longest has 4 tokens)"), std::string::npos)
      << bad_edit.status();
  // Too much work: 1 baseline + 3 control passes > max_planned_passes=3.
  v1::JobSpec big = IdsJob("m", {1, 2, 3, 4});
  auto* qk = big.add_analyses()->mutable_perplexity()->add_interventions()->mutable_qk_massive();
  qk->add_control_seeds(1);
  qk->add_control_seeds(2);
  auto too_big = Run(r.stub.get(), big);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(too_big.status().message()).find("max_planned_passes=3"), std::string::npos);
  // Non-finite activations fail the job naming the layer, instead of reporting numbers.
  v1::JobSpec inf = IdsJob("m", {1, 2, 3, 4});
  auto* s = inf.add_analyses()->mutable_perplexity()->add_interventions()->mutable_edits()->add_edits();
  s->set_hook("blocks.0.hook_resid_post");
  s->set_op(v1::EDIT_OP_SCALE);
  s->set_value(1e39);  // beyond float32: inf
  auto failed = Run(r.stub.get(), inf);
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->finished().state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(failed->finished().error().message().find("non-finite activations"), std::string::npos)
      << failed->finished().error().message();
  // A far deadline is clamped, not taken as already past.
  v1::JobSpec far = IdsJob("m", {1, 2, 3});
  far.set_deadline_seconds(1e10);
  auto far_done = Run(r.stub.get(), far);
  ASSERT_TRUE(far_done.ok()) << far_done.status();
  EXPECT_EQ(far_done->finished().state(), v1::JOB_STATE_SUCCEEDED);
  // Re-attaching past the end still ends with the Finished event.
  grpc::ClientContext sctx;
  v1::StreamJobRequest sr;
  sr.set_job_id(far_done->job_id());
  sr.set_from_seq(100000);
  auto reader = r.stub->StreamJob(&sctx, sr);
  v1::JobEvent ev;
  int n = 0;
  while (reader->Read(&ev)) ++n;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(ev.has_finished());
}

TEST_F(RobustnessTest, AStalledModelFileFailsThatModelOnlyAndSigtermStillExits) {
  const fs::path stalled = Copy("stalled");
  for (const auto& f : fs::directory_iterator(stalled))
    if (f.path().extension() == ".safetensors") {
      fs::remove(f.path());
      ASSERT_EQ(mkfifo(f.path().c_str(), 0600), 0);  // open() blocks until a writer comes: it never does
    }
  std::ofstream(*dir_ / "stall.yaml") << "load_timeout_seconds: 2\nmodels:\n  - {name: good, path: "
                                      << (*dir_ / "good").string() << "}\n  - {name: stalled, path: "
                                      << stalled.string() << "}\n";
  SpawnedServer s(*dir_, "stall", {"--config", (*dir_ / "stall.yaml").string()});
  ASSERT_TRUE(s.started()) << s.log();
  int rc = 0;
  // Health waits for loading to settle (the stalled model times out after 2 s) and reports NOT_SERVING.
  std::string out = Shell(absl::StrCat(SINKSCOPE_CLI_PATH, " -s ", s.address(), " health --wait 10"), &rc);
  EXPECT_NE(rc, 0) << out;
  out = Shell(absl::StrCat(SINKSCOPE_CLI_PATH, " -s ", s.address(), " models"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("READY"), std::string::npos) << out;
  EXPECT_NE(out.find("FAILED"), std::string::npos) << out;
  EXPECT_TRUE(s.Stop(5)) << "SIGTERM did not stop a server with a stalled load\n" << s.log();
  EXPECT_NE(s.log().find("load timed out"), std::string::npos) << s.log();
}

TEST_F(RobustnessTest, SigtermDuringAStalledLoadExitsPromptly) {
  const fs::path stalled = *dir_ / "stalled2";
  fs::remove_all(stalled);
  fs::copy(*dir_ / "good", stalled, fs::copy_options::recursive);
  for (const auto& f : fs::directory_iterator(stalled))
    if (f.path().extension() == ".safetensors") {
      fs::remove(f.path());
      ASSERT_EQ(mkfifo(f.path().c_str(), 0600), 0);
    }
  std::ofstream(*dir_ / "stall2.yaml") << "models: [{name: stalled, path: " << stalled.string() << "}]\n";
  SpawnedServer s(*dir_, "stall2", {"--config", (*dir_ / "stall2.yaml").string()});
  ASSERT_TRUE(s.started()) << s.log();
  EXPECT_TRUE(s.Stop(5)) << s.log();  // the load would take the default 600 s to time out
}

}  // namespace
}  // namespace sinkscope::server_test
