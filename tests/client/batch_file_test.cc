// Batch files (JSON lines, YAML, CLI-style), the manifest and server-list resolution, without a server.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "client/batch.h"
#include "client/batch_file.h"
#include "client/batch_manifest.h"
#include "client/job_flags.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using namespace sinkscope::client;

TEST(BatchFile, JsonLinesTakeSpecsWrappersAndCliFlags) {
  const std::string text = R"(# a comment, then a blank line

{"models":["tiny-rope"],"inputs":{"texts":{"texts":["hi"]}},"analyses":[{"sink_rate":{"tau":0.5}}],"label":"first"}
{"name":"second","spec":{"models":["tiny-drope"],"inputs":{"dataset":"brown-heldout"},"analyses":[{"perplexity":{}}]}}
-m tiny-rope,tiny-drope -t "It was the best of times." --sink-rate --per-prompt
{"name":"fourth","args":"-m tiny-rope -d study-disruption-literary --perplexity --bos-mlp 2"}
{"name":"second","args":["-m","tiny-rope","--ids","1,2,3","--residual"]}
)";
  auto jobs = ParseBatchText(text, /*yaml=*/false, "jobs.jsonl", ".");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 5u);
  EXPECT_EQ((*jobs)[0].name, "first");
  EXPECT_DOUBLE_EQ((*jobs)[0].spec.analyses(0).sink_rate().tau(), 0.5);
  EXPECT_EQ((*jobs)[1].name, "second");
  EXPECT_EQ((*jobs)[1].spec.inputs().dataset(), "brown-heldout");
  EXPECT_EQ((*jobs)[2].name, "job-003");
  EXPECT_EQ((*jobs)[2].spec.models_size(), 2);
  EXPECT_EQ((*jobs)[2].spec.inputs().texts().texts(0), "It was the best of times.");
  EXPECT_TRUE((*jobs)[2].spec.per_prompt());
  EXPECT_EQ((*jobs)[2].where, "jobs.jsonl:5");
  EXPECT_EQ((*jobs)[3].spec.analyses(0).perplexity().interventions(0).bos_mlp().layer(), 2);
  EXPECT_EQ((*jobs)[4].name, "second-2");  // names are unique
  EXPECT_EQ((*jobs)[4].spec.inputs().token_ids().prompts(0).ids_size(), 3);
}

TEST(BatchFile, YamlListOrJobsMap) {
  const std::string text = R"(
jobs:
  - name: rope sink
    spec:
      models: [tiny-rope]
      inputs: {texts: {texts: ["0.5", "hello"]}}
      analyses: [{sink_rate: {tau: 0.25}}]
      per_prompt: true
  - "-m tiny-drope -d brown-heldout --max-prompts 4 --entropy"
  - args: -m tiny-rope -d brown-heldout --massive
)";
  auto jobs = ParseBatchText(text, /*yaml=*/true, "jobs.yaml", ".");
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 3u);
  EXPECT_EQ((*jobs)[0].name, "rope_sink");
  EXPECT_DOUBLE_EQ((*jobs)[0].spec.analyses(0).sink_rate().tau(), 0.25);
  EXPECT_EQ((*jobs)[0].spec.inputs().texts().texts(0), "0.5");  // quoted: stays a string
  EXPECT_TRUE((*jobs)[0].spec.per_prompt());
  EXPECT_EQ((*jobs)[1].spec.inputs().max_prompts(), 4);
  EXPECT_EQ((*jobs)[2].spec.analyses(0).kind_case(), v1::Analysis::kMassiveValues);
}

TEST(BatchFile, ErrorsNameTheLine) {
  struct Case {
    std::string text;
    std::string needle;
  } cases[] = {
      {"{\"models\":[\"a\"],\"inputs\":{\"texts\":{\"texts\":[\"x\"]}},\"analyses\":[{\"sink_rate\":{}}]}\n{oops",
       "j:2: not valid JSON"},
      {"{\"modelz\":[\"a\"]}", "j:1: not a JobSpec"},
      {"-m a -t x --sink-rate --tau", "j:1:"},
      {"-m a -t x --no-such-flag", "no-such-flag"},
      {"{\"name\":\"x\",\"args\":\"-m a -t x --sink-rate\",\"extra\":1}", "unknown key \"extra\""},
      {"-m a -t 'unterminated --sink-rate", "unterminated"},
      {"# nothing\n", "no jobs"},
  };
  for (const auto& c : cases) {
    auto r = ParseBatchText(c.text, false, "j", ".");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.needle)) << r.status().message();
  }
  auto y = ParseBatchText("jobs: 3", true, "y.yaml", ".");
  ASSERT_FALSE(y.ok());
  EXPECT_TRUE(absl::StrContains(y.status().message(), "expected a list of jobs"));
}

TEST(BatchFile, SpecFilesAreRelativeToTheBatchFile) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("batchfile-" + std::to_string(getpid()));
  fs::create_directories(dir / "specs");
  std::ofstream(dir / "specs" / "s.json")
      << R"({"models":["m"],"inputs":{"dataset":"d"},"analyses":[{"residual_stats":{}}]})";
  std::ofstream(dir / "jobs.jsonl") << R"({"name":"a","spec":"specs/s.json"})"
                                    << "\n"
                                    << "--spec specs/s.json -m other --label b\n";
  auto jobs = ReadBatchFile((dir / "jobs.jsonl").string());
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_EQ((*jobs)[0].spec.inputs().dataset(), "d");
  EXPECT_EQ((*jobs)[1].name, "b");
  EXPECT_EQ((*jobs)[1].spec.models(0), "other");
  fs::remove_all(dir);
}

TEST(Manifest, RoundTripsAndFingerprintsContent) {
  const std::string path = ::testing::TempDir() + "/manifest-" + std::to_string(getpid()) + ".json";
  Manifest m;
  m.jobs_file = "/x/jobs.jsonl";
  ManifestEntry e;
  e.name = "job-001";
  e.server = "127.0.0.1:1";
  e.job_id = "j-1";
  e.state = "RUNNING";
  e.attempt = 2;
  e.error = "quote \" and newline \n";
  e.seconds = 1.5;
  m.jobs = {e};
  ASSERT_TRUE(SaveManifest(path, m).ok());
  auto back = LoadManifest(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->jobs.size(), 1u);
  EXPECT_EQ(back->jobs[0].error, e.error);
  EXPECT_EQ(back->jobs[0].attempt, 2);
  EXPECT_EQ(back->jobs[0].state, "RUNNING");
  EXPECT_TRUE(absl::IsNotFound(LoadManifest(path + ".none").status()));
  std::ofstream(path) << "garbage";
  EXPECT_FALSE(LoadManifest(path).ok());
  v1::JobSpec a, b;
  a.add_models("x");
  b.add_models("y");
  EXPECT_NE(Fingerprint(a), Fingerprint(b));
  EXPECT_EQ(Fingerprint(a), Fingerprint(a));
  EXPECT_EQ(Fingerprint(a).size(), 16u);
}

TEST(Servers, ListsAndNamesWithSeveralAddressesBecomeReplicas) {
  EXPECT_EQ(SplitServers("a:1, b:2,dns:///c:3"), (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  Resolver fake = [](const std::string& host) -> std::vector<std::string> {
    if (host == "sinkscope.lab") return {"10.0.0.7", "10.0.0.8", "[fd00::9]"};
    if (host == "one.lab") return {"10.0.0.1"};
    return {};
  };
  auto r = ResolveServers({"sinkscope.lab:50051", "127.0.0.1:7", "one.lab:9", "[::1]:5"}, fake);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::string> targets;
  for (const auto& x : *r) targets.push_back(x.target);
  EXPECT_EQ(targets, (std::vector<std::string>{"10.0.0.7:50051", "10.0.0.8:50051", "[fd00::9]:50051", "127.0.0.1:7",
                                               "one.lab:9", "[::1]:5"}));
  EXPECT_EQ((*r)[0].tls_name, "sinkscope.lab");  // TLS still verifies the name
  EXPECT_EQ((*r)[3].tls_name, "");
  EXPECT_FALSE(ResolveServers({"nowhere.invalid:1"}, fake).ok());
  EXPECT_FALSE(ResolveServers({"noport"}, fake).ok());
  const auto local = SystemResolve("localhost");
  EXPECT_FALSE(local.empty());
}

TEST(Words, ShellLikeSplitting) {
  auto w = SplitWords(R"(-m a,b -t "It's \"quoted\"" -t 'single $x' back\ slash)");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, (std::vector<std::string>{"-m", "a,b", "-t", "It's \"quoted\"", "-t", "single $x", "back slash"}));
}

TEST(Examples, EverySpecAndBatchFileParses) {
  const fs::path ex = fs::path(SINKSCOPE_SOURCE_DIR) / "examples";
  int specs = 0;
  for (const auto& e : fs::directory_iterator(ex / "specs")) {
    JobFlags f;
    f.spec_file = e.path().string();
    auto s = BuildJobSpec(f);
    ASSERT_TRUE(s.ok()) << e.path() << ": " << s.status();
    EXPECT_EQ(s->models_size(), s->models(0) == "tiny-drope" ? 1 : 2) << e.path();
    EXPECT_FALSE(s->label().empty()) << e.path() << ": say what it is";
    ++specs;
  }
  EXPECT_GE(specs, 15);
  auto jsonl = ReadBatchFile((ex / "batch.jsonl").string());
  ASSERT_TRUE(jsonl.ok()) << jsonl.status();
  EXPECT_EQ(static_cast<int>(jsonl->size()), specs + 4);
  auto yaml = ReadBatchFile((ex / "batch.yaml").string());
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(yaml->size(), 4u);
  EXPECT_TRUE(yaml->back().spec.per_prompt());
  auto big = ReadBatchFile((ex / "batch-llama2-7b.jsonl").string());
  ASSERT_TRUE(big.ok()) << big.status();
  for (const auto& j : *big) {
    EXPECT_EQ(j.spec.models(0), "llama2-7b") << j.name;
    EXPECT_EQ(j.spec.models(1), "llama2-7b-drope") << j.name;
  }
}
