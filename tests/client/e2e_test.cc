// The sinkscope binary against two real sinkscoped processes serving the shipped tiny RoPE/DroPE pair on
// 127.0.0.1 (one compute thread each): what a newcomer does with the README and --help.
//   - the study's comparison in one command, its tables within 100 columns, its figures;
//   - output for scripts: JSON with every field, CSV at full precision, per-prompt results and token ids that add
//     up to the aggregated numbers;
//   - a batch of 50 jobs over two servers with a failure in the middle, then a resume; an interrupted batch
//     (cancel, and --detach then re-attach); a DNS name as the server list.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/format.h"
#include "client/plot.h"
#include "tests/client/png.h"
#include "tests/client/run_cli.h"

namespace fs = std::filesystem;
using nlohmann::json;
using sinkscope::testing::Cli;
using sinkscope::testing::CliResult;
using sinkscope::testing::ReadText;
using sinkscope::testing::Sh;

namespace {

struct ServerProcess {
  int pid = 0;
  std::string port;
  std::string log;
};

fs::path* g_dir = nullptr;
ServerProcess g_servers[2];

ServerProcess StartServer(const std::string& name) {
  ServerProcess s;
  const std::string port_file = (*g_dir / (name + ".port")).string();
  s.log = (*g_dir / (name + ".log")).string();
  const CliResult r = Sh(absl::StrCat(SINKSCOPED_PATH, " --config ", SINKSCOPE_SOURCE_DIR,
                                      "/deploy/demo-models.yaml --listen 127.0.0.1:0 --threads 1 --port_file ",
                                      port_file, " >", s.log, " 2>&1 & echo $!"));
  s.pid = std::stoi(r.out);
  for (int i = 0; i < 300 && s.port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream(port_file) >> s.port;
  }
  return s;
}

std::string Addr(int i) { return "127.0.0.1:" + g_servers[i].port; }
std::string S0() { return " -s " + Addr(0) + " "; }

std::vector<std::string> Lines(const std::string& s) { return absl::StrSplit(s, '\n', absl::SkipEmpty()); }

json Manifest(const fs::path& out) { return json::parse(ReadText((out / "manifest.json").string())); }

std::map<std::string, int> States(const json& m) {
  std::map<std::string, int> n;
  for (const auto& j : m["jobs"]) ++n[j["state"].get<std::string>()];
  return n;
}

class E2e : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_dir = new fs::path(fs::path(testing::TempDir()) / ("sinkscope-e2e-" + std::to_string(getpid())));
    fs::create_directories(*g_dir);
    g_servers[0] = StartServer("a");
    g_servers[1] = StartServer("b");
    for (int i = 0; i < 2; ++i) {
      ASSERT_FALSE(g_servers[i].port.empty()) << ReadText(g_servers[i].log);
      const CliResult h = Cli("-s " + Addr(i) + " health --wait 60");
      ASSERT_EQ(h.rc, 0) << h.out << h.err << ReadText(g_servers[i].log);
    }
  }
  static void TearDownTestSuite() {
    for (auto& s : g_servers)
      if (s.pid > 0) kill(s.pid, SIGTERM);
    for (auto& s : g_servers)
      for (int i = 0; i < 100 && s.pid > 0 && kill(s.pid, 0) == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::error_code ec;
    fs::remove_all(*g_dir, ec);
    delete g_dir;
  }
  fs::path Dir(const std::string& name) {
    fs::path d = *g_dir / name;
    fs::create_directories(d);
    return d;
  }
};

TEST_F(E2e, TheStudysComparisonInOneCommandWithTablesAndFigures) {
  const fs::path d = Dir("phase");
  const CliResult r = Cli(S0() +
                          "run -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts 6 --max-tokens 64 "
                          "--phase --save " +
                          (d / "phase.jsonl").string() + " --plot " + (d / "fig").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const auto& l : Lines(r.out)) EXPECT_LE(sinkscope::client::DisplayWidth(l), 100u) << l;
  for (const char* needle : {"tiny-rope\nlayer", "tiny-drope\nlayer", "bos_mlp@spike", "comparison", "provenance",
                             "sink_rate.mean", "finished: SUCCEEDED"})
    EXPECT_TRUE(absl::StrContains(r.out, needle)) << needle << "\n" << r.out;
  for (const auto& l : Lines(r.out))
    if (absl::StartsWith(l, "bos_spike_layer.") || absl::StartsWith(l, "entropy.min_layer")) {
      EXPECT_TRUE(absl::EndsWith(l, " -")) << "a ratio of layer indices: " << l;
    }
  EXPECT_FALSE(absl::StrContains(r.err, "\r")) << "no progress line when stderr is not a terminal";
  if (sinkscope::client::FindGnuplot().empty()) GTEST_SKIP() << "gnuplot not installed";
  for (const char* name : {"sink_rate", "bos_norm", "massive_qkv", "entropy", "perplexity"}) {
    std::string err;
    const auto img = sinkscope::testing::ReadPng((d / "fig" / (std::string(name) + ".png")).string(), &err);
    ASSERT_TRUE(err.empty()) << err;
    EXPECT_EQ(img.width, sinkscope::client::kFigureWidth);
    EXPECT_EQ(img.height, sinkscope::client::kFigureHeight);
    EXPECT_GT(sinkscope::testing::InkFraction(img), 0.01) << name;
    EXPECT_TRUE(fs::exists(d / "fig" / (std::string(name) + ".svg")));
  }
  // The saved events draw the same figures again.
  const CliResult p = Cli("plot " + (d / "phase.jsonl").string() + " --out " + (d / "again").string());
  EXPECT_EQ(p.rc, 0) << p.err;
  EXPECT_TRUE(fs::exists(d / "again" / "perplexity.png"));
}

TEST_F(E2e, JsonAndCsvForScriptsWithPerPromptResults) {
  const std::string job =
      "run -m tiny-rope,tiny-drope -t 'The quick brown fox jumps over the lazy dog.' "
      "-t 'It was the best of times, it was the worst of times.' -t 'Call me Ishmael.' "
      "--sink-rate --residual --entropy --massive --perplexity --per-prompt --emit-token-ids";
  const CliResult j = Cli(S0() + "-f json " + job);
  ASSERT_EQ(j.rc, 0) << j.err;
  const auto lines = Lines(j.out);
  std::string job_id;
  int prompts = 0;
  for (const auto& l : lines) {
    const json e = json::parse(l);
    if (job_id.empty()) job_id = e["job_id"];
    EXPECT_EQ(e["job_id"], job_id);
    EXPECT_TRUE(e.contains("seq")) << l;
    if (e.contains("layer") && e["layer"].is_object()) {
      EXPECT_TRUE(e["layer"].contains("layer")) << l;
    }
    if (e.contains("prompt") && e["prompt"].is_object()) {
      ++prompts;
      EXPECT_EQ(e["prompt"]["token_ids"][0], 1) << "BOS first";
      EXPECT_EQ(e["prompt"]["token_ids"].size(), e["prompt"]["num_tokens"].get<size_t>());
    }
  }
  EXPECT_EQ(json::parse(lines[0])["seq"], "0");  // present although 0; 64-bit integers are JSON strings
  EXPECT_EQ(prompts, 2 * 3) << "one PromptResult per (model, prompt): the server side of --per-prompt";

  const CliResult c = Cli(S0() + "-f csv " + job);
  ASSERT_EQ(c.rc, 0) << c.err;
  // Per-prompt NLLs add up to the aggregated perplexity: PPL = exp(sum nll / sum targets), per model.
  std::map<std::string, double> nll, targets, ppl;
  std::map<std::string, int> heads;
  int sink_rows = 0;
  for (const auto& l : Lines(c.out)) {
    std::vector<std::string> f = absl::StrSplit(l, ',');
    if (f.size() != 10) continue;  // quoted fields do not occur in this job's rows that matter here
    if (f[1] == "prompt_perplexity" && f[3] == "baseline") {
      if (f[7] == "nll_sum") nll[f[2]] += std::stod(f[8]);
      if (f[7] == "num_targets") targets[f[2]] += std::stod(f[8]);
    }
    if (f[1] == "perplexity" && f[3] == "baseline" && f[7] == "perplexity") ppl[f[2]] = std::stod(f[8]);
    if (f[1] == "head" && f[7] == "head_score") ++heads[f[2]];
    if (f[1] == "layer" && f[7] == "sink_rate") {
      // The mean over 3 prompts of (heads over tau) / 4 heads: k/12 exactly, which 4 decimals would have lost.
      const double v = std::stod(f[8]) * 12;
      EXPECT_NEAR(v, std::round(v), 1e-9) << l;
      ++sink_rows;
    }
  }
  EXPECT_EQ(sink_rows, 2 * 6);
  EXPECT_EQ(heads["tiny-rope"], 6 * 4);
  for (const char* m : {"tiny-rope", "tiny-drope"}) {
    ASSERT_GT(targets[m], 0) << m << ": no per-prompt perplexity rows";
    EXPECT_NEAR(std::exp(nll[m] / targets[m]), ppl[m], 1e-6 * ppl[m]) << m;
  }
  const CliResult wide = Cli(S0() + "-f csv --wide " + job);
  ASSERT_EQ(wide.rc, 0) << wide.err;
  EXPECT_TRUE(absl::StrContains(Lines(wide.out)[0], "head_score.h3")) << Lines(wide.out)[0];
}

TEST_F(E2e, GlobalOptionsAfterTheCommandAndExitCodes) {
  const CliResult m = Cli("models -f csv -s " + Addr(1));
  EXPECT_EQ(m.rc, 0) << m.err;
  EXPECT_TRUE(absl::StartsWith(m.out, "name,state,")) << m.out;
  const CliResult bad = Cli("run -m tiny-rope -t hi --sink-rate --tau 3 -s " + Addr(0));
  EXPECT_EQ(bad.rc, 2);
  EXPECT_TRUE(absl::StrContains(bad.err, "tau")) << bad.err;
  const CliResult unknown = Cli(S0() + "run -m gpt5 -t hi --sink-rate");
  EXPECT_EQ(unknown.rc, 2);
  EXPECT_TRUE(absl::StrContains(unknown.err, "gpt5")) << unknown.err;
  // A deadline the job cannot meet: cancelled, exit 5.
  const CliResult late = Cli(S0() +
                             "-q run -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts 200 --phase "
                             "--truncate-to-context --no-cache --deadline 0.2");
  EXPECT_EQ(late.rc, 5) << late.out << late.err;
  // Prompts longer than the model's context (128 tokens): rejected unless cut, and the message says how.
  const CliResult longer = Cli(S0() + "run -m tiny-rope --dataset study-disruption-literary --perplexity");
  EXPECT_EQ(longer.rc, 2);
  EXPECT_TRUE(absl::StrContains(longer.err, "--truncate-to-context")) << longer.err;
  EXPECT_EQ(Cli(S0() + "-q run -m tiny-rope --dataset study-disruption-literary --perplexity --truncate-to-context").rc,
            0);
  // Cancelling a finished job says so and exits 1.
  const CliResult id = Cli(S0() + "submit -m tiny-rope -t hi --sink-rate");
  ASSERT_EQ(id.rc, 0);
  const std::string job = std::string(absl::StripTrailingAsciiWhitespace(id.out));
  EXPECT_EQ(Cli(S0() + "-q watch " + job).rc, 0);
  const CliResult cancel = Cli(S0() + "cancel " + job);
  EXPECT_EQ(cancel.rc, 1);
  EXPECT_TRUE(absl::StrContains(cancel.err, "already finished (SUCCEEDED)")) << cancel.err;
}

TEST_F(E2e, BatchOfFiftyOverTwoServersWithAFailureThenAResume) {
  const fs::path d = Dir("batch50");
  auto write_jobs = [&](bool broken) {
    std::ofstream f(d / "jobs.jsonl");
    f << "# 50 small jobs; job-25 asks for tau 3 (rejected by the server) until it is fixed\n";
    for (int i = 1; i <= 50; ++i) {
      const std::string model = i % 2 ? "tiny-rope" : "tiny-drope";
      if (i % 10 == 0) {  // a JobSpec line every tenth job
        f << R"({"name":"job-)" << i << R"(","spec":{"models":[")" << model
          << R"("],"inputs":{"texts":{"texts":["Spec job )" << i
          << R"(."]}},"analyses":[{"sink_rate":{}},{"perplexity":{}}]}})"
          << "\n";
      } else {
        f << "-m " << model << " -t 'Batch prompt number " << i << ".' --sink-rate --residual --perplexity --tau "
          << (broken && i == 25 ? "3" : "0.3") << " --label job-" << i << "\n";
      }
    }
  };
  write_jobs(/*broken=*/true);
  const std::string cmd = "-s " + Addr(0) + "," + Addr(1) + " batch " + (d / "jobs.jsonl").string() + " --out " +
                          (d / "out").string() + " --concurrency 4";
  const CliResult first = Cli(cmd);
  EXPECT_EQ(first.rc, 4) << first.out << first.err;
  json m = Manifest(d / "out");
  ASSERT_EQ(m["jobs"].size(), 50u);
  EXPECT_EQ(States(m)["SUCCEEDED"], 49) << m.dump(1);
  EXPECT_EQ(States(m)["FAILED"], 1);
  std::map<std::string, int> per_server;
  for (const auto& j : m["jobs"]) {
    ++per_server[j["server"].get<std::string>()];
    if (j["name"] == "job-25") {
      EXPECT_EQ(j["state"], "FAILED");
      EXPECT_TRUE(absl::StrContains(j["error"].get<std::string>(), "tau")) << j.dump();
    }
  }
  EXPECT_GE(per_server[Addr(0)], 10) << m.dump(1);
  EXPECT_GE(per_server[Addr(1)], 10) << m.dump(1);
  EXPECT_TRUE(absl::StrContains(first.out, "50 jobs: 49 succeeded")) << first.out;
  EXPECT_TRUE(fs::exists(d / "out" / "jobs" / "job-7.jsonl"));
  EXPECT_TRUE(fs::exists(d / "out" / "jobs" / "job-7.csv"));
  const std::string combined = ReadText((d / "out" / "results.csv").string());
  std::set<std::string> ids;
  for (const auto& l : Lines(combined)) ids.insert(l.substr(0, l.find(',')));
  EXPECT_EQ(ids.size(), 1u + 49u) << "header + 49 job ids";
  for (const auto& l : Lines(first.out)) EXPECT_LE(sinkscope::client::DisplayWidth(l), 100u) << l;

  // Fix the broken job and run again: only it is submitted.
  write_jobs(/*broken=*/false);
  const CliResult second = Cli(cmd);
  EXPECT_EQ(second.rc, 0) << second.out << second.err;
  m = Manifest(d / "out");
  EXPECT_EQ(States(m)["SUCCEEDED"], 50);
  EXPECT_TRUE(absl::StrContains(second.out, "(49 already done before this run)")) << second.out;
  int lines_about_jobs = 0;
  for (const auto& l : Lines(second.err)) lines_about_jobs += absl::StartsWith(l, "job-");
  EXPECT_EQ(lines_about_jobs, 1) << second.err;
  // A third run has nothing to do.
  EXPECT_EQ(Cli(cmd).rc, 0);
}

TEST_F(E2e, InterruptedBatchCancelsOrDetachesAndAResumeFinishes) {
  for (bool detach : {false, true}) {
    const fs::path d = Dir(detach ? "detach" : "cancel");
    {
      std::ofstream f(d / "jobs.yaml");
      f << "jobs:\n";
      for (int i = 1; i <= 6; ++i)
        f << "  - name: slow-" << i << "\n    args: -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts 48 "
          << "--phase --no-cache --seed " << i << "\n";  // slow on purpose: never a cached answer
    }
    const std::string cmd = std::string(SINKSCOPE_CLI_PATH) + " -s " + Addr(0) + "," + Addr(1) + " batch " +
                            (d / "jobs.yaml").string() + " --out " + (d / "out").string() + " --concurrency 2" +
                            (detach ? " --detach" : "");
    // SIGTERM is handled like Ctrl-C (a background job of a script ignores SIGINT).
    const CliResult r = Sh(cmd + " & pid=$!; sleep 2; kill -TERM $pid; wait $pid");
    EXPECT_EQ(r.rc, 5) << r.out << r.err;
    json m = Manifest(d / "out");
    const auto states = States(m);
    if (detach) {  // left running on the servers, with their ids recorded
      int left = 0;
      for (const auto& j : m["jobs"])
        left += !j["job_id"].get<std::string>().empty() && (j["state"] == "RUNNING" || j["state"] == "QUEUED");
      EXPECT_GE(left, 1) << m.dump(1);
    } else {
      EXPECT_GE(states.count("CANCELLED") ? states.at("CANCELLED") : 0, 1) << m.dump(1);
      EXPECT_EQ(states.count("RUNNING") + states.count("QUEUED"), 0u) << m.dump(1);
    }
    std::map<std::string, std::string> ids_before;
    for (const auto& j : m["jobs"])
      if (j["state"] == "RUNNING" || j["state"] == "QUEUED") ids_before[j["name"]] = j["job_id"];
    const CliResult resume = Sh(cmd);
    EXPECT_EQ(resume.rc, 0) << resume.out << resume.err;
    m = Manifest(d / "out");
    EXPECT_EQ(States(m)["SUCCEEDED"], 6) << m.dump(1);
    for (const auto& j : m["jobs"])  // re-attached, not resubmitted
      if (ids_before.count(j["name"])) {
        EXPECT_EQ(j["job_id"], ids_before[j["name"]]) << j.dump();
      }
  }
}

TEST_F(E2e, TheExamplesBatchRunsAndItsResultsPlot) {
  const fs::path d = Dir("examples");
  const std::string ex = std::string(SINKSCOPE_SOURCE_DIR) + "/examples/";
  const CliResult r =
      Cli("-q -s " + Addr(0) + "," + Addr(1) + " batch " + ex + "batch.jsonl --out " + (d / "out").string());
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const CliResult p =
      Cli("plot " + (d / "out" / "jobs" / "phase.jsonl").string() + " " +
          (d / "out" / "jobs" / "qk_disruption_literary.jsonl").string() + " --out " + (d / "fig").string());
  if (sinkscope::client::FindGnuplot().empty()) GTEST_SKIP() << "gnuplot not installed";
  ASSERT_EQ(p.rc, 0) << p.err;
  for (const char* name : {"sink_rate", "bos_norm", "massive_qkv", "entropy", "perplexity"}) {
    std::string err;
    const auto img = sinkscope::testing::ReadPng((d / "fig" / (std::string(name) + ".png")).string(), &err);
    EXPECT_TRUE(err.empty()) << err;
    EXPECT_GT(sinkscope::testing::InkFraction(img), 0.01) << name;
  }
}

TEST_F(E2e, ANameWithSeveralAddressesSpreadsTheBatch) {
  // "localhost" resolves to 127.0.0.1 (and ::1, where nothing listens: left out with a warning).
  const fs::path d = Dir("dns");
  {
    std::ofstream f(d / "jobs.jsonl");
    for (int i = 0; i < 4; ++i) f << "-m tiny-rope -t 'Resolved " << i << "' --sink-rate\n";
  }
  const CliResult r = Cli("-s localhost:" + g_servers[0].port + " batch " + (d / "jobs.jsonl").string() + " --out " +
                          (d / "out").string());
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_EQ(States(Manifest(d / "out"))["SUCCEEDED"], 4);
}

}  // namespace
