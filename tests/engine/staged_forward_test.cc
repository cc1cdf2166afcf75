// Staged forwards (model::ForwardRun): Begin + RunLayers + Finish in any split, and several runs advancing layer by
// layer in turn (layer-major), give exactly what LlamaForward gives; a forward started at layer l from a residual
// kept from a clean forward equals the full forward when its hooks act only at layers >= l (prefix reuse).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "tests/engine/fixtures.h"

namespace sinkscope::model {
namespace {

using testing::FixtureDir;

at::Tensor Ids(const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

std::vector<int64_t> Prompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> ids = {1};
  for (int64_t t = 1; t < n; ++t) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.push_back(static_cast<int64_t>((seed >> 33) % static_cast<uint64_t>(vocab)));
  }
  return ids;
}

class StagedForwardTest : public testing::FixtureModelTest {};

TEST_P(StagedForwardTest, LayerByLayerInTurnEqualsWholeForwards) {
  const LlamaConfig& c = model_->config();
  const int64_t L = c.num_hidden_layers;
  const std::vector<std::vector<int64_t>> prompts = {Prompt(9, c.vocab_size, 1), Prompt(6, c.vocab_size, 2)};
  // Observers at every resid_post record the order the runs reach their layers.
  std::vector<std::string> order;
  std::vector<HookSet> hooks(prompts.size());
  for (size_t k = 0; k < prompts.size(); ++k)
    for (int64_t l = 0; l < L; ++l)
      hooks[k].Observe(HookName(l, HookId::kResidPost),
                       [&order, k, l](const HookPoint&, const at::Tensor&) { order.push_back(absl::StrCat(k, "@", l)); });
  std::vector<ForwardRun> runs;
  for (size_t k = 0; k < prompts.size(); ++k) {
    ForwardOptions o;
    o.hooks = &hooks[k];
    o.return_target_nll = true;
    auto r = ForwardRun::Begin(c, model_->weights(), Ids(prompts[k]), o);
    ASSERT_TRUE(r.ok()) << r.status();
    runs.push_back(std::move(*r));
  }
  for (int64_t l = 0; l < L; ++l)
    for (auto& r : runs) {
      ASSERT_EQ(r.next_layer(), l);
      ASSERT_TRUE(r.RunLayers(l + 1).ok());
    }
  EXPECT_EQ(order.front(), "0@0");
  EXPECT_EQ(order[1], "1@0");  // layer-major: the second run reached layer 0 before the first reached layer 1
  for (size_t k = 0; k < prompts.size(); ++k) {
    auto staged = runs[k].Finish();
    ASSERT_TRUE(staged.ok()) << staged.status();
    ForwardOptions o;
    o.return_target_nll = true;
    auto whole = model_->Forward(Ids(prompts[k]), o);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_TRUE(at::equal(staged->logits, whole->logits)) << k;  // bitwise: the same code in the same order
    EXPECT_TRUE(at::equal(staged->target_nll, whole->target_nll)) << k;
  }
}

TEST_P(StagedForwardTest, StartingFromAKeptResidualEqualsTheFullForward) {
  const LlamaConfig& c = model_->config();
  const int64_t L = c.num_hidden_layers;
  ASSERT_GE(L, 2);
  const int64_t l = L - 1;
  const std::vector<int64_t> a = Prompt(8, c.vocab_size, 3), b = Prompt(5, c.vocab_size, 4);
  std::vector<int64_t> ids = a;
  ids.insert(ids.end(), b.begin(), b.end());
  // The clean packed forward, stopped at layer l: its residual is kept.
  ForwardOptions clean;
  clean.segments = {8, 5};
  auto run = ForwardRun::Begin(c, model_->weights(), Ids(ids), clean);
  ASSERT_TRUE(run.ok());
  ASSERT_TRUE(run->RunLayers(l).ok());
  const at::Tensor kept = run->residual();
  // An intervention at layer l (zero BOS's MLP output), full forward vs started at l.
  HookSet edit;
  edit.Intervene(HookName(l, HookId::kMlpOut), [](const HookPoint&, const at::Tensor& x) {
    at::Tensor y = x.clone();
    y.select(0, 0).zero_();
    return y;
  });
  EXPECT_EQ(edit.FirstLayer(L), l);
  ForwardOptions o;
  o.segments = {8, 5};
  o.segment_hooks = {&edit, &edit};
  o.return_target_nll = true;
  auto full = LlamaForward(c, model_->weights(), Ids(ids), o);
  ASSERT_TRUE(full.ok()) << full.status();
  o.start_layer = l;
  o.start_residual = kept;
  int layers_run = 0;
  o.after_layer = [&](int) {
    ++layers_run;
    return absl::OkStatus();
  };
  auto reused = LlamaForward(c, model_->weights(), Ids(ids), o);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_EQ(layers_run, 1);
  EXPECT_TRUE(at::equal(reused->target_nll, full->target_nll));
  EXPECT_TRUE(at::equal(reused->logits, full->logits));
  // A residual of the wrong shape is refused, naming what is expected.
  o.start_residual = kept.narrow(0, 0, 3);
  auto bad = LlamaForward(c, model_->weights(), Ids(ids), o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("start_residual must be [13"), std::string::npos) << bad.status();
}

TEST(StagedForward, FinishBeforeTheLastLayerIsRefused) {
  ASSERT_FALSE(FixtureDir().empty()) << testing::FixtureError();
  auto m = LlamaModel::Load(FixtureDir() + "/rope_mha", LoadOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  auto run = (*m)->Begin({1, 2, 3}, ForwardOptions{});
  ASSERT_TRUE(run.ok()) << run.status();
  auto r = run->Finish();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Variants, StagedForwardTest, ::testing::Values("rope_mha", "rope_gqa", "nope", "qk_norm"));

}  // namespace
}  // namespace sinkscope::model
