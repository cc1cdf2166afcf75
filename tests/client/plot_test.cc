// The study's figures from synthetic events: every figure is written as PNG and SVG, each PNG decodes, has the
// documented size, is not blank and carries both models' colours (RoPE and DroPE on one chart); a missing gnuplot
// is a clear message, not a crash.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "client/plot.h"
#include "tests/client/events.h"
#include "tests/client/png.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using namespace sinkscope::client;
using sinkscope::testing::MakeEvents;
using sinkscope::testing::SyntheticJob;

namespace {

fs::path TempDir(const std::string& name) {
  fs::path d = fs::path(::testing::TempDir()) / ("sinkscope-plot-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(d);
  return d;
}

bool HasColour(const sinkscope::testing::Image& img, uint32_t rgb) {
  for (uint32_t p : img.rgb)
    if (p == rgb) return true;
  return false;
}

}  // namespace

TEST(Plot, CollectsOneSeriesPerModelAndTheConditions) {
  const PlotData d = CollectPlotData(MakeEvents(SyntheticJob{}));
  ASSERT_EQ(d.series.size(), 2u);
  EXPECT_EQ(d.series[0].label, "llama2-7b");
  EXPECT_EQ(d.series[1].sink_rate.size(), 32u);
  EXPECT_DOUBLE_EQ(d.series[1].sink_rate.at(5).mean, 0.71875);
  EXPECT_DOUBLE_EQ(d.series[0].bos_norm.at(1).mean, 712.34567);
  std::vector<std::string> conditions;
  for (const auto& b : d.perplexity) conditions.push_back(b.condition);
  EXPECT_EQ(conditions,
            (std::vector<std::string>{"baseline", "bos_mlp@spike", "qk_massive", "qk_massive (random control)"}));
  EXPECT_EQ(FigureNames(d),
            (std::vector<std::string>{"sink_rate", "bos_norm", "massive_qkv", "entropy", "perplexity"}));
  // The same model in two jobs: two series, told apart by job id.
  auto evs = MakeEvents(SyntheticJob{});
  SyntheticJob other;
  other.job_id = "j-00000000000000bb";
  for (auto& e : MakeEvents(other)) evs.push_back(e);
  const PlotData two = CollectPlotData(evs);
  ASSERT_EQ(two.series.size(), 4u);
  EXPECT_EQ(two.series[2].label, "llama2-7b (j-00000000000000bb)");
}

TEST(Plot, WritesEveryFigureAsPngAndSvgThatDecodeAndShowBothModels) {
  if (FindGnuplot().empty()) GTEST_SKIP() << "gnuplot not installed (deploy/install-deps.sh installs gnuplot-nox)";
  for (int layers : {32, 4}) {  // Llama-2-7B-sized and tiny-pair-sized
    SyntheticJob j;
    j.layers = layers;
    j.heads = layers == 4 ? 4 : 32;
    const fs::path dir = TempDir(std::to_string(layers));
    std::ostringstream log;
    ASSERT_EQ(PlotEvents(MakeEvents(j), dir.string(), log), 0) << log.str();
    for (const char* name : {"sink_rate", "bos_norm", "massive_qkv", "entropy", "perplexity"}) {
      const fs::path png = dir / (std::string(name) + ".png"), svg = dir / (std::string(name) + ".svg");
      EXPECT_TRUE(absl::StrContains(log.str(), png.string())) << log.str();
      std::string err;
      const auto img = sinkscope::testing::ReadPng(png.string(), &err);
      ASSERT_TRUE(err.empty()) << err;
      EXPECT_EQ(img.width, kFigureWidth) << name;
      EXPECT_EQ(img.height, kFigureHeight) << name;
      EXPECT_GT(sinkscope::testing::InkFraction(img), 0.01) << name << " looks blank";
      EXPECT_GT(sinkscope::testing::DistinctColours(img), 16u) << name;
      EXPECT_TRUE(HasColour(img, 0x1f77b4)) << name << ": no line/bar of the first model";
      EXPECT_TRUE(HasColour(img, 0xff7f0e)) << name << ": no line/bar of the second model";
      std::stringstream s;
      s << std::ifstream(svg).rdbuf();
      EXPECT_TRUE(absl::StrContains(s.str(), "<svg")) << name;
      EXPECT_TRUE(absl::StrContains(s.str(), "llama2-7b-drope")) << name << ": legend";
      EXPECT_TRUE(fs::exists(dir / (std::string(name) + ".gp")));
    }
    fs::remove_all(dir);
  }
}

TEST(Plot, MissingGnuplotIsAClearMessageAndTheScriptsStay) {
  const fs::path dir = TempDir("nognuplot");
  setenv("SINKSCOPE_GNUPLOT", "/nonexistent/gnuplot", 1);
  std::ostringstream log;
  const int rc = PlotEvents(MakeEvents(SyntheticJob{}), dir.string(), log);
  unsetenv("SINKSCOPE_GNUPLOT");
  EXPECT_EQ(rc, 1);
  EXPECT_TRUE(absl::StrContains(log.str(), "gnuplot not found")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "apt-get install gnuplot-nox")) << log.str();
  EXPECT_TRUE(fs::exists(dir / "sink_rate.gp"));
  EXPECT_FALSE(fs::exists(dir / "sink_rate.png"));
  fs::remove_all(dir);
}

TEST(Plot, NothingToPlotAndUnreadableFiles) {
  std::ostringstream log;
  v1::JobEvent only;
  only.mutable_accepted();
  EXPECT_EQ(PlotEvents({only}, TempDir("empty").string(), log), 2);
  EXPECT_TRUE(absl::StrContains(log.str(), "nothing to plot"));
  const fs::path bad = TempDir("bad");
  fs::create_directories(bad);
  std::ofstream(bad / "x.jsonl") << "{\"job_id\":\"j\",\"accepted\":{}}\nnot json\n";
  std::vector<v1::JobEvent> evs;
  std::ostringstream log2;
  EXPECT_EQ(ReadEventFiles({(bad / "x.jsonl").string()}, &evs, log2), 2);
  EXPECT_TRUE(absl::StrContains(log2.str(), "x.jsonl:2")) << log2.str();
  fs::remove_all(bad);
}
