// Built-in datasets: the study's exact strings, the Brown held-out file, digests, errors.
#include "common/job/datasets.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/util/sha256.h"
#include "nlohmann/json.hpp"

namespace sinkscope::job {
namespace {

namespace fs = std::filesystem;

std::string Rep(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

const std::string kDataDir = std::string(SINKSCOPE_SOURCE_DIR) + "/models/datasets";

TEST(Datasets, CompiledInStudySetsAreExact) {
  const auto all = ListDatasets("");
  std::vector<std::string> names;
  for (const auto& d : all) names.push_back(d.name);
  EXPECT_EQ(names, (std::vector<std::string>{"study-massive-comparison", "study-disruption-literary",
                                             "study-disruption-technical", "study-disruption-repetitive"}));
  auto lit = LoadDataset("study-disruption-literary", "");
  ASSERT_TRUE(lit.ok()) << lit.status();
  ASSERT_EQ(lit->prompts.size(), 3u);
  EXPECT_EQ(lit->prompts[0], Rep("In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole. ", 10));
  EXPECT_EQ(lit->prompts[1], Rep("It was the best of times, it was the worst of times. ", 15));
  EXPECT_EQ(lit->prompts[2], Rep("Call me Ishmael. Some years ago, never mind how long precisely. ", 10));
  auto rep = LoadDataset("study-disruption-repetitive", "");
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->prompts[2], Rep("How vexingly quick daft zebras jump. ", 30));
  auto tech = LoadDataset("study-disruption-technical", "");
  ASSERT_TRUE(tech.ok());
  EXPECT_EQ(tech->prompts[1], Rep("Machine learning models learn patterns from data through optimization. ", 15));
  auto cmp = LoadDataset("study-massive-comparison", "");
  ASSERT_TRUE(cmp.ok());
  EXPECT_EQ(cmp->prompts[2], Rep("Natural language processing enables computers to understand human language. ", 10));
  for (const auto& d : all) {
    EXPECT_EQ(d.digest.size(), 64u);
    EXPECT_EQ(d.digest, util::Sha256Hex(nlohmann::json(d.prompts).dump()));
    EXPECT_FALSE(d.description.empty());
    EXPECT_NE(d.source.find("drope-activations"), std::string::npos);
    EXPECT_NE(d.description.find("docs/study.md §"), std::string::npos) << d.name;
  }
  EXPECT_NE(all[0].digest, all[1].digest);
}

TEST(Datasets, BrownHeldoutFromTheDataDir) {
  std::ifstream in(kDataDir + "/brown-heldout.txt");
  ASSERT_TRUE(in) << "models/datasets/brown-heldout.txt is missing";
  std::string line;
  size_t nonblank = 0;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) ++nonblank;
  auto d = LoadDataset("brown-heldout", kDataDir);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->prompts.size(), nonblank);
  EXPECT_GT(d->prompts.size(), 100u);
  EXPECT_NE(d->source.find("brown-heldout.txt"), std::string::npos);
  bool listed = false;
  for (const auto& x : ListDatasets(kDataDir)) listed |= x.name == "brown-heldout" && x.digest == d->digest;
  EXPECT_TRUE(listed);
}

TEST(Datasets, ErrorsNameTheProblem) {
  auto missing = LoadDataset("brown-heldout", "/nonexistent/dir");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/dir/brown-heldout.txt"), std::string::npos)
      << missing.status();
  EXPECT_EQ(LoadDataset("brown-heldout", "").status().code(), absl::StatusCode::kNotFound);
  auto unknown = LoadDataset("wikitext", kDataDir);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("study-disruption-literary"), std::string::npos) << unknown.status();
  EXPECT_NE(unknown.status().message().find("brown-heldout"), std::string::npos);
  // Not listed when the file is absent.
  for (const auto& d : ListDatasets("/nonexistent/dir")) EXPECT_NE(d.name, "brown-heldout");

  // Blank lines are skipped, CRLF is stripped, a file with no prompt is an error.
  const fs::path dir = fs::temp_directory_path() / ("sinkscope-ds-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "brown-heldout.txt") << "first line\r\n\n  \nsecond line\n";
  auto small = LoadDataset("brown-heldout", dir.string());
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->prompts, (std::vector<std::string>{"first line", "second line"}));
  std::ofstream(dir / "brown-heldout.txt", std::ios::trunc) << "\n\n";
  EXPECT_EQ(LoadDataset("brown-heldout", dir.string()).status().code(), absl::StatusCode::kInvalidArgument);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sinkscope::job
