// Outputs for people and for scripts, on synthetic event streams (tests/client/events.h): JSON with every field,
// CSV at full precision with every number (long and --wide), per-prompt results, tables that fit 100 columns,
// comparison rows that show differences where a ratio means nothing, the progress line, exit codes.
#include <gtest/gtest.h>

#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/exit_codes.h"
#include "client/format.h"
#include "client/progress.h"
#include "client/records.h"
#include "client/render.h"
#include "tests/client/events.h"

namespace v1 = sinkscope::v1;
using namespace sinkscope::client;
using sinkscope::testing::MakeEvents;
using sinkscope::testing::SyntheticJob;

namespace {

std::string RenderAll(const std::vector<v1::JobEvent>& evs, Format f, bool wide = false) {
  std::ostringstream out;
  EventRenderer r(RenderOptions{f, wide}, out);
  for (const auto& e : evs) r.Render(e);
  r.Finish();
  return out.str();
}

std::vector<std::string> Lines(const std::string& s) { return absl::StrSplit(s, '\n', absl::SkipEmpty()); }

}  // namespace

TEST(Numbers, ExactIsShortestRoundTrip) {
  EXPECT_EQ(Exact(0.71875), "0.71875");
  EXPECT_EQ(Exact(0.1), "0.1");
  EXPECT_EQ(Exact(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(Exact(12), "12");
  EXPECT_EQ(Exact(1e-10), "1e-10");
  for (double v : {0.71875, 1.0 / 3, 712.34567, 2.5e-300, 123456789.123}) EXPECT_EQ(std::stod(Exact(v)), v);
  EXPECT_EQ(Num(0.71875), "0.7188");  // tables round; CSV and JSON never do
}

TEST(Json, EveryFieldOneEventALineJobIdEverywhere) {
  const auto evs = MakeEvents(SyntheticJob{});
  const auto lines = Lines(RenderAll(evs, Format::kJson));
  ASSERT_EQ(lines.size(), evs.size());
  for (const auto& l : lines) EXPECT_TRUE(absl::StrContains(l, "\"job_id\":\"j-00000000000000aa\"")) << l;
  // Defaults are present: seq 0 of the first event, layer 0, a zero count, queue position 0.
  EXPECT_TRUE(absl::StrContains(lines[0], "\"seq\":\"0\"")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "\"queue_position\":0")) << lines[0];
  std::string layer0;
  for (const auto& l : lines)
    if (absl::StrContains(l, "\"layer\":{") && absl::StrContains(l, "\"llama2-7b\"") && layer0.empty()) layer0 = l;
  EXPECT_TRUE(absl::StrContains(layer0, "\"layer\":0,")) << layer0;
  EXPECT_TRUE(absl::StrContains(layer0, "\"mean\":0,")) << layer0;  // sink rate 0 at layer 0
  EXPECT_TRUE(absl::StrContains(layer0, "\"post_final_norm\":false")) << layer0;
  // proto3 JSON: 64-bit integers are strings (documented in docs/client.md).
  bool targets = false;
  for (const auto& l : lines) targets |= absl::StrContains(l, "\"num_targets\":\"1234\"");
  EXPECT_TRUE(targets);
  // Per-prompt results are events too, with token ids.
  bool prompt = false;
  for (const auto& l : lines)
    prompt |= absl::StrContains(l, "\"prompt\":{") && absl::StrContains(l, "\"token_ids\":[1,101,");
  EXPECT_TRUE(prompt);
}

TEST(Csv, LongFormatKeepsEveryNumberAtFullPrecision) {
  const auto evs = MakeEvents(SyntheticJob{});
  const std::string csv = RenderAll(evs, Format::kCsv);
  const auto lines = Lines(csv);
  EXPECT_EQ(lines[0], "job_id,kind,model,condition,prompt,layer,head,metric,value,text");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), static_cast<long>(lines.size()));
  const std::string id = "j-00000000000000aa";
  // Rows of job `id` that must be there: 0.71875 stays 0.71875; std and n are there; per-head scores have a head
  // column; provenance as text records; the comparison with differences; per prompt: per-layer metrics, per-head
  // scores, NLL per condition, token ids.
  const std::string rows[] = {
      "layer,llama2-7b-drope,baseline,,5,,sink_rate,0.71875,\n",
      "layer,llama2-7b-drope,baseline,,5,,sink_rate.std,0.0625,\n",
      "layer,llama2-7b,baseline,,3,,sink_rate.n,3,\n",
      "head,llama2-7b,baseline,,0,31,head_score,",
      "layer,llama2-7b,baseline,,1,,bos_norm,712.34567,\n",
      "layer,llama2-7b,baseline,,0,,massive.q.top1.dim,100,\n",
      "perplexity,llama2-7b,qk_massive,,,,control.std,0.08165,\n",
      "perplexity,llama2-7b,qk_massive,,,,control_perplexity.2,10.7,\n",
      "provenance,llama2-7b,,,,,weights_digest,," + std::string(64, 'a'),
      "provenance,llama2-7b,bos_mlp@spike,,,,detail,,layer 1 (argmax_ratio)",
      "provenance,llama2-7b,,,,,truncated_prompts,0,\n",
      "comparison,llama2-7b-drope,,,,,bos_spike_layer.argmax_ratio.diff,1,",
      "prompt_layer,llama2-7b,baseline,2,4,,bos_ratio,1.75,\n",
      "prompt_layer,llama2-7b,baseline,0,3,,massive.k.count,11,\n",
      "prompt_head,llama2-7b,baseline,1,0,7,head_score,0.5,\n",
      "prompt_perplexity,llama2-7b,qk_massive/control_seed_42,0,,,nll_sum,80.5,\n",
      "prompt,llama2-7b,,0,,,token_ids,,1 101 102 103",
      "state,,,,,,state,,SUCCEEDED\n",
  };
  for (const std::string& row : rows) EXPECT_TRUE(absl::StrContains(csv, id + "," + row)) << row;
  // Ratios only where they mean something.
  EXPECT_FALSE(absl::StrContains(csv, "bos_spike_layer.argmax_ratio.ratio"));
  EXPECT_FALSE(absl::StrContains(csv, "increase_pct.ratio"));
  EXPECT_TRUE(absl::StrContains(csv, "massive_values.q.total.ratio,"));
  // Every non-text row has a number that parses; every row has 10 fields (no field holds a comma here).
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string> f = absl::StrSplit(lines[i], ',');
    ASSERT_EQ(f.size(), 10u) << lines[i];
    if (f[9].empty()) {
      EXPECT_NO_THROW((void)std::stod(f[8])) << lines[i];
    }
  }
}

TEST(Csv, WidePivotsToOneRowPerLayerWithHeadColumns) {
  const std::string csv = RenderAll(MakeEvents(SyntheticJob{}), Format::kCsv, /*wide=*/true);
  const auto lines = Lines(csv);
  std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  ASSERT_GE(header.size(), 40u);
  EXPECT_EQ(header[0], "job_id");
  EXPECT_EQ(header[4], "layer");
  auto col = [&](const std::string& name) { return std::find(header.begin(), header.end(), name) - header.begin(); };
  EXPECT_LT(col("head_score.h31"), static_cast<long>(header.size()));
  EXPECT_LT(col("sink_rate.std"), static_cast<long>(header.size()));
  EXPECT_LT(col("perplexity"), static_cast<long>(header.size()));
  // One row per (model, layer) for the aggregated layers, plus per-prompt rows and perplexity rows.
  int layer_rows = 0;
  for (const auto& l : lines) {
    std::vector<std::string> f = absl::StrSplit(l, ',');
    layer_rows += f[1] == "llama2-7b" && f[2] == "baseline" && f[3].empty() && !f[4].empty();
  }
  EXPECT_EQ(layer_rows, 32);
  for (const auto& l : lines) {
    std::vector<std::string> f = absl::StrSplit(l, ',');
    if (f.size() > 4 && f[1] == "llama2-7b-drope" && f[2] == "baseline" && f[3].empty() && f[4] == "5") {
      EXPECT_EQ(f[col("sink_rate")], "0.71875");
    }
  }
}

TEST(Table, FitsOneHundredColumnsAndWideShowsMore) {
  SyntheticJob j;
  j.activation_stats = true;
  const auto evs = MakeEvents(j);
  const std::string table = RenderAll(evs, Format::kTable);
  for (const auto& l : Lines(table)) EXPECT_LE(DisplayWidth(l), kTableWidth) << l;
  for (const char* h : {"sink_rate", "bos_norm", "bos_ratio", "entropy", "anisotropy", "massive_q", "massive_v"})
    EXPECT_TRUE(absl::StrContains(table, h)) << h;
  EXPECT_TRUE(absl::StrContains(table, "activation statistics"));
  EXPECT_TRUE(absl::StrContains(table, "per prompt"));
  EXPECT_TRUE(absl::StrContains(table, "finished: SUCCEEDED"));
  EXPECT_TRUE(absl::StrContains(table, "truncated"));  // provenance: prompts cut to the context
  EXPECT_FALSE(absl::StrContains(table, "cached"));
  auto cached = evs;
  for (auto& ev : cached)
    if (ev.has_summary()) {
      ev.mutable_summary()->set_cached(true);
      ev.mutable_summary()->set_cached_from("j-0000000000000001");
    }
  EXPECT_TRUE(absl::StrContains(RenderAll(cached, Format::kTable), "cached: the results of job j-0000000000000001"));
  const std::string wide = RenderAll(evs, Format::kTable, /*wide=*/true);
  EXPECT_TRUE(absl::StrContains(wide, "h31"));
  EXPECT_TRUE(absl::StrContains(wide, "other_norm"));
  size_t longest = 0;
  for (const auto& l : Lines(wide)) longest = std::max(longest, DisplayWidth(l));
  EXPECT_GT(longest, kTableWidth);
}

TEST(Table, ComparisonShowsDifferencesWhereRatiosMeanNothing) {
  const std::string table = RenderAll(MakeEvents(SyntheticJob{}), Format::kTable);
  auto row = [&](const std::string& metric) {
    for (const auto& l : Lines(table))
      if (absl::StartsWith(l, metric + " ")) return l;
    return std::string();
  };
  // A layer index: difference +1, no ratio. Percentages: difference in points, no ratio (never "-103.28").
  EXPECT_TRUE(absl::StrContains(row("bos_spike_layer.argmax_ratio"), "+1")) << row("bos_spike_layer.argmax_ratio");
  EXPECT_TRUE(absl::EndsWith(row("bos_spike_layer.argmax_ratio"), " -")) << row("bos_spike_layer.argmax_ratio");
  EXPECT_TRUE(absl::EndsWith(row("perplexity.qk_massive.increase_pct"), " -"));
  EXPECT_FALSE(absl::StrContains(table, "x-1.03"));
  EXPECT_TRUE(absl::StrContains(row("massive_values.q.total"), "x0.3695")) << row("massive_values.q.total");
}

TEST(Table, ThreeModelsDropColumnsToFitAndSayHowToSeeThem) {
  SyntheticJob j;
  j.models = {"llama2-7b-rope-reference", "llama2-7b-drope-recalibrated", "llama2-7b-nope-from-scratch"};
  j.per_prompt = false;
  const auto evs = MakeEvents(j);
  std::vector<v1::JobEvent> three = evs;
  for (auto& e : three)
    if (e.has_summary())
      for (auto& r : *e.mutable_summary()->mutable_comparison()) {
        r.add_values(1), r.add_diffs(0), r.add_ratios(1);
      }
  const std::string table = RenderAll(three, Format::kTable);
  for (const auto& l : Lines(table)) EXPECT_LE(DisplayWidth(l), kTableWidth) << l;
  EXPECT_TRUE(absl::StrContains(table, "hidden; --wide shows all"));
}

TEST(Records, MassiveCountsOfAPromptFollowTheLayerTensors) {
  Flattener f;
  v1::JobEvent layer;
  auto* mv = layer.mutable_layer()->mutable_massive_values();
  layer.mutable_layer()->set_model("m");
  mv->add_tensors()->set_tensor(v1::QKV_TENSOR_K);
  mv->add_tensors()->set_tensor(v1::QKV_TENSOR_V);
  f.Flatten(layer);
  v1::JobEvent p;
  p.mutable_prompt()->set_model("m");
  auto* l = p.mutable_prompt()->add_layers();
  l->add_massive_counts(4);
  l->add_massive_counts(5);
  std::vector<std::string> metrics;
  for (const auto& r : f.Flatten(p)) metrics.push_back(r.metric);
  EXPECT_NE(std::find(metrics.begin(), metrics.end(), "massive.k.count"), metrics.end());
  EXPECT_NE(std::find(metrics.begin(), metrics.end(), "massive.v.count"), metrics.end());
  // Unset optional fields (analyses not asked) give no records.
  EXPECT_EQ(std::find(metrics.begin(), metrics.end(), "sink_rate"), metrics.end());
}

TEST(Progress, LineSaysQueueModelLayerPromptAndEta) {
  std::ostringstream err;
  ProgressLine p(/*enabled=*/false, err);
  v1::JobEvent ev;
  ev.set_job_id("j-1");
  ev.mutable_accepted()->set_queue_position(3);
  p.Update(ev);
  EXPECT_EQ(p.Text(), "job j-1: queued, position 3");
  ev.mutable_started()->set_num_prompts(32);
  p.Update(ev);
  ev.mutable_progress()->set_fraction(0.5);
  ev.mutable_progress()->set_model("tiny-rope");
  ev.mutable_progress()->set_condition("baseline");
  ev.mutable_progress()->set_prompt(11);
  ev.mutable_progress()->set_num_prompts(32);
  ev.mutable_progress()->set_layer(5);
  p.Update(ev);
  const std::string t = p.Text();
  EXPECT_TRUE(absl::StartsWith(t, "[ 50%] tiny-rope baseline · prompt 12/32 · layer 5 · ")) << t;
  EXPECT_TRUE(err.str().empty());  // disabled: never drawn (stderr not a terminal)
  EXPECT_EQ(ProgressLine::Duration(65), "1:05");
  EXPECT_EQ(ProgressLine::Duration(3723), "1:02:03");
}

TEST(Progress, EnabledLineIsClearedWhenDone) {
  std::ostringstream err;
  {
    ProgressLine p(/*enabled=*/true, err);
    v1::JobEvent ev;
    ev.set_job_id("j-2");
    ev.mutable_accepted()->set_queue_position(0);
    p.Update(ev);
    p.Around([&] { err << "OUTPUT\n"; });
    p.Done();
  }
  const std::string s = err.str();
  EXPECT_TRUE(absl::StrContains(s, "queued, position 0"));
  EXPECT_TRUE(absl::EndsWith(s, "\r\033[K")) << s;  // the last thing written erases the line
  EXPECT_TRUE(absl::StrContains(s, "\r\033[KOUTPUT\n"));
}

TEST(Table, MemoryBudgetsSizedPerModelOrFixed) {
  v1::ServerInfo info;
  info.set_version("0.1.0");
  info.mutable_limits()->set_residual_memory_per_model(true);
  info.mutable_limits()->set_forward_memory_per_model(true);
  info.mutable_limits()->set_pack_tokens(4096);
  info.mutable_limits()->set_attention("auto");
  std::ostringstream a;
  RenderServerInfo(info, RenderOptions{Format::kTable, false}, a);
  EXPECT_TRUE(absl::StrContains(a.str(), "packing: 4096 tokens/forward, attention auto\n")) << a.str();
  EXPECT_TRUE(absl::StrContains(a.str(), "residual budget per model, from its device")) << a.str();
  for (const absl::string_view line : absl::StrSplit(a.str(), '\n')) EXPECT_LE(line.size(), 80u) << line;
  EXPECT_TRUE(absl::StrContains(a.str(), "per forward: activation memory sized per model")) << a.str();
  info.mutable_limits()->set_residual_memory_per_model(false);
  info.mutable_limits()->set_forward_memory_per_model(false);
  info.mutable_limits()->set_forward_memory_bytes(int64_t{3} << 30);
  std::ostringstream b;
  RenderServerInfo(info, RenderOptions{Format::kTable, false}, b);
  EXPECT_TRUE(absl::StrContains(b.str(), "residual budget none (one wave)")) << b.str();  // fixed 0: one wave
  EXPECT_TRUE(absl::StrContains(b.str(), "per forward: 3.00 GiB of activations at most")) << b.str();

  v1::ModelInfo m;
  m.set_name("tiny-rope");
  m.set_state(v1::MODEL_STATE_READY);
  m.set_forward_memory_bytes(int64_t{6} << 30);
  m.set_residual_memory_bytes(int64_t{3} << 30);
  m.set_device_memory_bytes(int64_t{24} << 30);
  std::ostringstream c;
  RenderModel(m, RenderOptions{Format::kTable, false}, c);
  EXPECT_TRUE(absl::StrContains(c.str(), "memory: per forward 6.00 GiB, residual 3.00 GiB, device 24.00 GiB"))
      << c.str();
}

TEST(ExitCodes, Documented) {
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::UNAVAILABLE), 3);
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::UNAUTHENTICATED), 3);
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::PERMISSION_DENIED), 3);
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::INVALID_ARGUMENT), 2);
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::NOT_FOUND), 2);
  EXPECT_EQ(ExitCodeFor(grpc::StatusCode::INTERNAL), 1);
  EXPECT_EQ(ExitCodeFor(v1::JOB_STATE_SUCCEEDED), 0);
  EXPECT_EQ(ExitCodeFor(v1::JOB_STATE_FAILED), 4);
  EXPECT_EQ(ExitCodeFor(v1::JOB_STATE_CANCELLED), 5);
}

TEST(Table, PartialLayerRowsAreMarkedWhenPipedAndReplacedInPlaceOnATerminal) {
  // Two waves over two layers: the first wave's rows are partial (4 of 8 prompts), the second's final.
  std::vector<v1::JobEvent> evs;
  for (int wave = 0; wave < 2; ++wave)
    for (int l = 0; l < 2; ++l) {
      v1::JobEvent e;
      auto* r = e.mutable_layer();
      r->set_model("m");
      r->set_layer(l);
      r->mutable_sink_rate()->mutable_sink_rate()->set_mean(0.25 * (wave + 1));
      r->mutable_sink_rate()->set_tau(0.3);
      r->set_prompts_done(wave == 0 ? 4 : 8);
      r->set_prompts_total(8);
      r->set_partial(wave == 0);
      evs.push_back(e);
    }
  const std::string plain = RenderAll(evs, Format::kTable);
  int partial = 0, rows = 0;
  for (const auto& l : Lines(plain)) {
    if (absl::StrContains(l, "(partial: 4 of 8 prompts)")) ++partial;
    if (absl::StrContains(l, "0.5")) ++rows;  // the final rows, unmarked
  }
  EXPECT_EQ(partial, 2) << plain;
  EXPECT_EQ(rows, 2) << plain;
  EXPECT_FALSE(absl::StrContains(plain, "\x1b[")) << "piped output has no control sequences";
  std::ostringstream tty;
  EventRenderer r(RenderOptions{Format::kTable, false, /*rewrite_partial=*/true}, tty);
  for (const auto& e : evs) r.Render(e);
  r.Finish();
  // The second wave moves up over the two partial rows and clears them before printing its own.
  EXPECT_TRUE(absl::StrContains(tty.str(), "\x1b[2F\x1b[J")) << tty.str();
  size_t escapes = 0;
  for (size_t at = tty.str().find("\x1b["); at != std::string::npos; at = tty.str().find("\x1b[", at + 1)) ++escapes;
  EXPECT_EQ(escapes, 2u);  // once: the final wave replaces the partial one, nothing else moves
  // CSV keeps the final layers only.
  const std::string csv = RenderAll(evs, Format::kCsv);
  EXPECT_FALSE(absl::StrContains(csv, "0.25")) << csv;
  EXPECT_TRUE(absl::StrContains(csv, "0.5")) << csv;
}
