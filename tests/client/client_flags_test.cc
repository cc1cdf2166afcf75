#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "client/job_flags.h"
#include "client/render.h"

namespace v1 = sinkscope::v1;
using sinkscope::client::BuildJobSpec;
using sinkscope::client::JobFlags;

TEST(ClientFlags, PhasePresetIsTheStudysComparison) {
  JobFlags f;
  f.models = {"tiny-rope", "tiny-drope"};
  f.dataset = "brown-heldout";
  f.phase = true;
  auto s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->models_size(), 2);
  EXPECT_EQ(s->inputs().dataset(), "brown-heldout");
  std::vector<v1::Analysis::KindCase> kinds;
  for (const auto& a : s->analyses()) kinds.push_back(a.kind_case());
  EXPECT_EQ(kinds, (std::vector<v1::Analysis::KindCase>{v1::Analysis::kSinkRate, v1::Analysis::kResidualStats,
                                                        v1::Analysis::kMatrixEntropy, v1::Analysis::kMassiveValues,
                                                        v1::Analysis::kPerplexity}));
  const auto& p = s->analyses(4).perplexity();
  ASSERT_EQ(p.interventions_size(), 1);
  EXPECT_EQ(p.interventions(0).bos_mlp().spike(), v1::SPIKE_RULE_ARGMAX_RATIO);
}

TEST(ClientFlags, IdsAndInterventions) {
  JobFlags f;
  f.models = {"m"};
  f.ids = {"1, 450,29871", "1,2"};
  f.bos_mlp = {"3", "jump"};
  f.qk_disruption = true;
  f.control_seeds = {42, 43};
  f.ablate_heads = {"0:1", "2:3"};
  auto s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->inputs().token_ids().prompts_size(), 2);
  EXPECT_EQ(s->inputs().token_ids().prompts(0).ids_size(), 3);
  EXPECT_EQ(s->inputs().token_ids().prompts(0).ids(2), 29871);
  const auto& p = s->analyses(0).perplexity();
  ASSERT_EQ(p.interventions_size(), 4);
  EXPECT_EQ(p.interventions(0).bos_mlp().layer(), 3);
  EXPECT_EQ(p.interventions(1).bos_mlp().spike(), v1::SPIKE_RULE_ARGMAX_JUMP);
  EXPECT_EQ(p.interventions(2).qk_massive().control_seeds_size(), 2);
  EXPECT_EQ(p.interventions(3).heads().heads(1).head(), 3);
}

TEST(ClientFlags, BadCombinationsAreClearErrors) {
  JobFlags f;
  f.sink_rate = true;
  f.texts = {"x"};
  EXPECT_NE(BuildJobSpec(f).status().message().find("--model"), std::string::npos);
  f.models = {"m"};
  f.dataset = "d";
  EXPECT_NE(BuildJobSpec(f).status().message().find("exactly one of"), std::string::npos);
  f.dataset.clear();
  f.sink_rate = false;
  EXPECT_NE(BuildJobSpec(f).status().message().find("choose at least one"), std::string::npos);
  f.perplexity = true;
  f.bos_mlp = {"first"};
  EXPECT_NE(BuildJobSpec(f).status().message().find("--bos-mlp"), std::string::npos);
  f.bos_mlp.clear();
  f.ablate_heads = {"3"};
  EXPECT_NE(BuildJobSpec(f).status().message().find("LAYER:HEAD"), std::string::npos);
  f.ablate_heads.clear();
  f.texts.clear();
  f.ids = {"1,x"};
  EXPECT_NE(BuildJobSpec(f).status().message().find("'x' is not an integer"), std::string::npos);
}

TEST(ClientFlags, SpecFileJsonAndModelOverride) {
  const std::string path = testing::TempDir() + "/spec.json";
  std::ofstream(path)
      << R"({"models":["a"],"inputs":{"texts":{"texts":["hi"]}},"analyses":[{"sinkRate":{"tau":0.5}}]})";
  JobFlags f;
  f.spec_file = path;
  auto s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->models(0), "a");
  EXPECT_DOUBLE_EQ(s->analyses(0).sink_rate().tau(), 0.5);
  f.models = {"b", "c"};
  s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->models_size(), 2);
  // Switches and limits apply on top of the file; inputs and analyses may not be mixed in.
  f.truncate_to_context = true;
  f.no_cache = true;
  f.max_tokens = 64;
  s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->truncate_to_context());
  EXPECT_TRUE(s->no_cache());
  EXPECT_EQ(s->limits().max_tokens(), 64);
  f.sink_rate = true;
  EXPECT_NE(BuildJobSpec(f).status().message().find("no input or analysis flag"), std::string::npos);
  f.sink_rate = false;
  std::ofstream(path) << "{not json";
  EXPECT_FALSE(BuildJobSpec(f).ok());
}

TEST(ClientFlags, LabelsAreLeftToTheServerAndPerPromptFlags) {
  JobFlags f;
  f.models = {"m"};
  f.texts = {"x"};
  f.bos_mlp = {"spike", "2"};
  f.qk_disruption = true;
  f.top_per_head = 1;
  f.ablate_heads = {"0:1"};
  f.emit_token_ids = true;
  auto s = BuildJobSpec(f);
  ASSERT_TRUE(s.ok()) << s.status();
  // The server generates the documented labels (bos_mlp@spike, bos_mlp@L2, qk_massive, top1_per_head,
  // head_ablation); the client used to send "bos_mlp@2" and "heads".
  for (const auto& iv : s->analyses(0).perplexity().interventions()) EXPECT_EQ(iv.label(), "");
  EXPECT_TRUE(s->per_prompt());  // implied by --emit-token-ids
  EXPECT_TRUE(s->emit_token_ids());
  f.qk_disruption = false;
  f.control_seeds = {42};
  EXPECT_NE(BuildJobSpec(f).status().message().find("--control-seeds"), std::string::npos);
}

TEST(ClientFlags, CliStyleWordsForBatchFiles) {
  auto s = sinkscope::client::ParseJobArgs({"run", "-m", "a,b", "-t", "It was.", "--sink-rate", "--per-prompt"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->models_size(), 2);
  EXPECT_TRUE(s->per_prompt());
  auto bad = sinkscope::client::ParseJobArgs({"-m", "a", "--frobnicate"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("frobnicate"), std::string::npos);
}

TEST(ClientRender, CsvAndJsonOfALayerEvent) {
  v1::JobEvent ev;
  ev.set_job_id("j-1");
  auto* l = ev.mutable_layer();
  l->set_model("m,1");
  l->set_layer(0);
  l->mutable_sink_rate()->mutable_sink_rate()->set_mean(0.71875);
  l->mutable_residual_stats()->mutable_bos_norm()->set_mean(12.5);
  std::ostringstream out;
  sinkscope::client::EventRenderer r({sinkscope::client::Format::kCsv, false}, out);
  r.Render(ev);
  EXPECT_NE(out.str().find("job_id,kind,model,condition,prompt,layer,head,metric,value,text\n"), std::string::npos);
  EXPECT_NE(out.str().find("j-1,layer,\"m,1\",baseline,,0,,sink_rate,0.71875,\n"), std::string::npos) << out.str();
  std::ostringstream js;
  sinkscope::client::EventRenderer rj({sinkscope::client::Format::kJson, false}, js);
  rj.Render(ev);
  EXPECT_NE(js.str().find("\"layer\":0,"), std::string::npos) << js.str();  // defaults are printed
  EXPECT_NE(js.str().find("\"seq\":\"0\""), std::string::npos) << js.str();
  EXPECT_EQ(js.str().back(), '\n');
}
