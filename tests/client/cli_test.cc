// The sinkscope binary against a scripted stand-in server (fake_server.h): help with an example on every command,
// the documented exit codes, global options anywhere, bearer tokens (flag, file), TLS with a CA file, credentials
// refused, a job that fails at run time, a cancel that comes too late, no progress line when piped, completion.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/format.h"
#include "client/plot.h"
#include "tests/client/events.h"
#include "tests/client/fake_server.h"
#include "tests/client/run_cli.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using sinkscope::testing::Cli;
using sinkscope::testing::FakeServer;
using sinkscope::testing::FakeSinkscope;
using sinkscope::testing::Quote;
using sinkscope::testing::ReadText;
using sinkscope::testing::Sh;

namespace {

const char* kCommands[] = {"info",  "models", "model",  "datasets", "health", "run",   "submit",
                           "watch", "get",    "cancel", "jobs",     "plot",   "batch", "completion"};

std::vector<v1::JobEvent> Finishing(v1::JobState state, const std::string& message = "") {
  std::vector<v1::JobEvent> evs(3);
  evs[0].mutable_accepted();
  evs[1].mutable_started()->set_num_prompts(1);
  evs[2].mutable_finished()->set_state(state);
  if (!message.empty()) {
    evs[2].mutable_finished()->mutable_error()->set_code(13);
    evs[2].mutable_finished()->mutable_error()->set_message(message);
  }
  return evs;
}

fs::path Temp(const std::string& name) {
  fs::path d = fs::path(::testing::TempDir()) / ("sinkscope-cli-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST(Cli, EveryCommandHasHelpWithAnExample) {
  auto top = Cli("--help");
  EXPECT_EQ(top.rc, 0);
  EXPECT_TRUE(absl::StrContains(top.out, "Exit status")) << top.out;
  for (const char* c : kCommands) {
    EXPECT_TRUE(absl::StrContains(top.out, c)) << c;
    auto r = Cli(absl::StrCat(c, " --help"));
    EXPECT_EQ(r.rc, 0) << c;
    EXPECT_TRUE(absl::StrContains(r.out, "Example:\n  sinkscope") || absl::StrContains(r.out, "Example:\n  id=") ||
                absl::StrContains(r.out, "Example:\n  source"))
        << c << ":\n"
        << r.out;
  }
}

TEST(Cli, UsageErrorsExitTwoWithAMessage) {
  struct Case {
    std::string args, needle;
  } cases[] = {
      {"models --bogus", "--bogus"},
      {"-f xml models", "xml"},
      {"frobnicate", "frobnicate"},
      {"", "subcommand"},
      {"run -m m -t x", "choose at least one"},
      {"run -m m -t x --sink-rate --control-seeds 1", "--control-seeds"},
      {"--token-file /nonexistent/token models", "--token-file"},
      {"--tls-ca /nonexistent/ca.pem models", "--tls-ca"},
      {"plot /nonexistent.jsonl --out /tmp/x", "nonexistent"},
      {"batch /nonexistent.jsonl --out /tmp/x", "nonexistent"},
  };
  for (const auto& c : cases) {
    auto r = Cli(c.args);
    EXPECT_EQ(r.rc, 2) << c.args << "\n" << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.needle)) << c.args << "\n" << r.err;
  }
}

TEST(Cli, UnavailableServerExitsThree) {
  auto r = Cli("-s 127.0.0.1:1 --timeout 3 models");
  EXPECT_EQ(r.rc, 3);
  EXPECT_TRUE(absl::StrContains(r.err, "server unavailable at 127.0.0.1:1")) << r.err;
  auto h = Cli("-s 127.0.0.1:1 health");
  EXPECT_EQ(h.rc, 3);
  EXPECT_TRUE(absl::StrContains(h.out, "UNREACHABLE")) << h.out;
  auto w = Cli("-s 127.0.0.1:1 health --wait 1");
  EXPECT_EQ(w.rc, 3);
  EXPECT_TRUE(absl::StrContains(w.out, "UNREACHABLE: no server answered within 1 s")) << w.out;
}

// health --wait rides on gRPC's wait-for-ready and the Watch stream: it waits for a server that is not listening
// yet, then for its status to turn SERVING, and returns as soon as it does.
TEST(Cli, HealthWaitWaitsForTheServerThenForServing) {
  int port = 0;
  {  // a port nobody listens on yet
    FakeSinkscope probe;
    FakeServer s(&probe);
    port = s.port();
  }
  FakeSinkscope svc;
  std::unique_ptr<FakeServer> server;
  std::mutex mu;
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    {
      std::lock_guard<std::mutex> lock(mu);
      server = std::make_unique<FakeServer>(&svc, "", "", port);
      server->SetServing(false);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    std::lock_guard<std::mutex> lock(mu);
    server->SetServing(true);
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto r = Cli("-s 127.0.0.1:" + std::to_string(port) + " health --wait 30");
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  later.join();
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  EXPECT_GE(took, 1.4);  // not before SERVING
  EXPECT_LT(took, 10);   // and soon after it
  // Still NOT_SERVING when --wait runs out: that status, exit 3.
  server->SetServing(false);
  auto n = Cli("-s 127.0.0.1:" + std::to_string(port) + " health --wait 0.5");
  EXPECT_EQ(n.rc, 3);
  EXPECT_EQ(n.out, "NOT_SERVING\n");
  EXPECT_EQ(Cli("-s 127.0.0.1:" + std::to_string(port) + " health").out, "NOT_SERVING\n");
}

TEST(Cli, GlobalOptionsGoAnywhere) {
  FakeSinkscope svc;
  FakeServer server(&svc);
  for (const std::string& args :
       {"-s " + server.address() + " -f json models", "models -s " + server.address() + " -f json",
        "-f json models --server " + server.address()}) {
    auto r = Cli(args);
    EXPECT_EQ(r.rc, 0) << args << r.err;
    EXPECT_TRUE(absl::StrContains(r.out, "\"name\":\"fake-rope\"")) << args << r.out;
  }
  auto env = Sh("SINKSCOPE_SERVER=" + server.address() + " " + SINKSCOPE_CLI_PATH + " datasets --quiet");
  EXPECT_EQ(env.rc, 0) << env.err;
  EXPECT_TRUE(absl::StrContains(env.out, "fake-set"));
}

TEST(Cli, TokensFromFlagFileOrEnvAndRefusalsExitThree) {
  FakeSinkscope svc;
  svc.token = "s3cret";
  FakeServer server(&svc);
  const std::string s = "-s " + server.address() + " ";
  auto none = Cli(s + "models");
  EXPECT_EQ(none.rc, 3);
  EXPECT_TRUE(absl::StrContains(none.err, "not authenticated")) << none.err;
  EXPECT_TRUE(absl::StrContains(none.err, "missing or unknown bearer token")) << none.err;  // the server's words
  EXPECT_EQ(Cli(s + "--token wrong models").rc, 3);
  auto ok = Cli(s + "models --token s3cret");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_EQ(svc.last_authorization(), "Bearer s3cret");
  const fs::path dir = Temp("token");
  std::ofstream(dir / "token") << "s3cret\n";
  EXPECT_EQ(Cli(s + "--token-file " + (dir / "token").string() + " models").rc, 0);
  EXPECT_EQ(Sh("SINKSCOPE_TOKEN_FILE=" + (dir / "token").string() + " " + SINKSCOPE_CLI_PATH + " " + s + "models").rc,
            0);
  auto denied = Cli(s + "--token denied models");
  EXPECT_EQ(denied.rc, 3);
  EXPECT_TRUE(absl::StrContains(denied.err, "permission denied: principal 'denied' may not submit jobs")) << denied.err;
  fs::remove_all(dir);
}

TEST(Cli, TlsWithACaFile) {
  const fs::path dir = Temp("tls");
  auto gen =
      Sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
         "'subjectAltName=DNS:localhost,IP:127.0.0.1' -keyout " +
         (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string());
  if (gen.rc != 0) GTEST_SKIP() << "openssl cannot make a test certificate: " << gen.err;
  FakeSinkscope svc;
  svc.token = "t";
  FakeServer server(&svc, ReadText((dir / "cert.pem").string()), ReadText((dir / "key.pem").string()));
  const std::string ca = " --tls-ca " + (dir / "cert.pem").string() + " --token t ";
  auto ok = Cli("-s localhost:" + std::to_string(server.port()) + ca + "models");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_TRUE(absl::StrContains(ok.out, "fake-rope"));
  auto ip = Cli("-s 127.0.0.1:" + std::to_string(server.port()) + ca + "models");
  EXPECT_EQ(ip.rc, 0) << ip.err;
  auto plain = Cli("-s localhost:" + std::to_string(server.port()) + " --token t --timeout 3 models");
  EXPECT_EQ(plain.rc, 3) << plain.err;  // plaintext to a TLS server: unavailable
  fs::remove_all(dir);
}

TEST(Cli, JobOutcomesMapToExitCodes) {
  FakeSinkscope svc;
  FakeServer server(&svc);
  const std::string s = "-s " + server.address() + " ";
  svc.events = Finishing(v1::JOB_STATE_SUCCEEDED);
  auto ok = Cli(s + "run -m fake-rope -t hi --sink-rate --bos-mlp 2 --per-prompt");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_TRUE(absl::StrContains(ok.out, "finished: SUCCEEDED")) << ok.out;
  // The client sends no labels: the server's documented ones (bos_mlp@L2) apply.
  const v1::JobSpec spec = svc.last_spec();
  ASSERT_EQ(spec.analyses_size(), 2);
  EXPECT_EQ(spec.analyses(1).perplexity().interventions(0).label(), "");
  EXPECT_TRUE(spec.per_prompt());
  // No progress line when stderr is not a terminal (here: a file).
  EXPECT_FALSE(absl::StrContains(ok.err, "\r")) << ok.err;

  svc.events = Finishing(v1::JOB_STATE_FAILED, "engine exploded at layer 3");
  auto failed = Cli(s + "run -m fake-rope -t hi --sink-rate");
  EXPECT_EQ(failed.rc, 4);
  EXPECT_TRUE(absl::StrContains(failed.out, "finished: FAILED (engine exploded at layer 3)")) << failed.out;
  EXPECT_EQ(Cli(s + "watch j-fake").rc, 4);
  EXPECT_EQ(Cli(s + "watch j-none").rc, 2);  // NOT_FOUND: the request was wrong

  svc.events = Finishing(v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Cli(s + "-f json run -m fake-rope -t hi --sink-rate").rc, 5);

  svc.cancel_state = v1::JOB_STATE_CANCELLED;
  auto c = Cli(s + "cancel j-fake");
  EXPECT_EQ(c.rc, 0);
  EXPECT_EQ(c.out, "CANCELLED\n");
  svc.cancel_state = v1::JOB_STATE_SUCCEEDED;
  auto late = Cli(s + "cancel j-fake");
  EXPECT_EQ(late.rc, 1);
  EXPECT_TRUE(absl::StrContains(late.err, "had already finished (SUCCEEDED); nothing was cancelled")) << late.err;

  auto detached = Cli(s + "run --detach -m fake-rope -t hi --sink-rate");
  EXPECT_EQ(detached.rc, 0);
  EXPECT_EQ(detached.out, "j-fake\n");
}

TEST(Cli, RunSavesEventsAndPlotsThem) {
  FakeSinkscope svc;
  FakeServer server(&svc);
  sinkscope::testing::SyntheticJob j;
  j.layers = 4;
  j.heads = 4;
  svc.events = sinkscope::testing::MakeEvents(j);
  const fs::path dir = Temp("save");
  auto r = Cli("-s " + server.address() + " run -m a,b -t hi --phase --save " + (dir / "ev.jsonl").string() +
               " --plot " + (dir / "fig").string());
  EXPECT_EQ(r.rc, sinkscope::client::FindGnuplot().empty() ? 1 : 0) << r.err;
  EXPECT_TRUE(absl::StrContains(ReadText((dir / "ev.jsonl").string()), "\"finished\""));
  EXPECT_TRUE(fs::exists(dir / "fig" / "sink_rate.gp"));
  auto p = Cli("plot " + (dir / "ev.jsonl").string() + " --out " + (dir / "fig2").string());
  EXPECT_EQ(p.rc, r.rc) << p.err;
  fs::remove_all(dir);
}

TEST(Cli, BashCompletionCompletesCommandsOptionsAndValues) {
  const std::string script = std::string("source <(") + SINKSCOPE_CLI_PATH + " completion bash); ";
  auto complete = [&](const std::string& words, int cword) {
    return Sh("bash -c " + Quote(script + "COMP_WORDS=(" + words + "); COMP_CWORD=" + std::to_string(cword) +
                                 "; _sinkscope; echo \"${COMPREPLY[*]}\""));
  };
  auto cmds = complete("sinkscope ru", 1);
  EXPECT_EQ(cmds.rc, 0) << cmds.err;
  EXPECT_EQ(cmds.out, "run\n");
  auto opts = complete("sinkscope run --per-p", 2);
  EXPECT_EQ(opts.out, "--per-prompt\n") << opts.err;
  auto fmt = complete("sinkscope run -m x -f ''", 5);
  EXPECT_EQ(fmt.out, "table json csv\n");
  auto global = complete("sinkscope batch --tls", 2);
  EXPECT_EQ(global.out, "--tls-ca\n");
}
