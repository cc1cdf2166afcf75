// Packed forwards: several prompts in one forward (block-diagonal causal attention, positions restarting at every
// prompt, per-prompt hooks) must give what each prompt gives alone — logits, target NLL, every hook point (hook_pattern
// included, chunked), and interventions applied to one prompt only, whether attention runs in equal-length runs or in
// padded groups (AttentionBatching; the grouping and its gather/scatter rows are checked by hand too). The one-prompt
// forward itself is checked against the independent python reference in forward_test.cc, so this closes the loop for
// packed forwards.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/model/segments.h"
#include "tests/engine/fixtures.h"

namespace sinkscope::model {
namespace {

using testing::FixtureDir;
using testing::RelErr;

constexpr double kTol = 1e-5;  // fp32, relative to the tensor's max |value|

// Prompts of lengths 7, 5, 5, 5, 12, 1 by default: a run of equal lengths (batched attention) between unequal ones,
// and a one-token prompt (no target).
std::vector<std::vector<int64_t>> Prompts(int64_t vocab, const std::vector<int64_t>& lengths = {7, 5, 5, 5, 12, 1}) {
  std::vector<std::vector<int64_t>> p;
  uint64_t x = 12345;
  for (int64_t n : lengths) {
    std::vector<int64_t> ids = {1};
    for (int64_t t = 1; t < n; ++t) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      ids.push_back(static_cast<int64_t>((x >> 33) % static_cast<uint64_t>(vocab)));
    }
    p.push_back(ids);
  }
  return p;
}

at::Tensor Ids(const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

// Records every hook point of one prompt; hook_pattern chunks are assembled into [H, T, T].
struct Recorder {
  std::map<std::string, at::Tensor> acts;
  HookSet hooks;
  Recorder(int64_t n_layers, int64_t T) {
    for (const std::string& name : AllHookNames(n_layers))
      hooks.Observe(name, [this, T](const HookPoint& hp, const at::Tensor& x) {
        if (hp.name.find("hook_pattern") != std::string::npos) {
          at::Tensor& full = acts[hp.name];
          if (!full.defined()) full = at::full({x.size(0), T, T}, -1.0, at::TensorOptions().dtype(at::kFloat));
          ASSERT_EQ(x.size(2), T) << hp.name;  // a prompt's pattern spans its own keys only
          full.narrow(1, hp.q_offset, x.size(1)).copy_(x);
        } else {
          ASSERT_EQ(x.size(0), T) << hp.name;
          acts[hp.name] = x.clone();
        }
      });
  }
};

class PackingTest : public testing::FixtureModelTest {
 protected:
  void CheckPackedEqualsOnePromptAtATime(AttentionBatching batching, const std::vector<int64_t>& lengths,
                                         int64_t chunk);
  void CheckInterventionsReachOnlyTheirPrompt(AttentionBatching batching);
};

// Both ways of batching attention: runs of equal lengths (7 | 5 5 5 | 12 | 1), and every prompt padded to 12 in one
// group (kPadded; the padding is far below kAttentionFreePadding), whose chunks of 3 query rows end inside some
// prompts, past others, and cover only padding rows of the shorter ones.
TEST_P(PackingTest, PackedEqualsOnePromptAtATime) {
  for (AttentionBatching batching : {AttentionBatching::kEqualLength, AttentionBatching::kPadded}) {
    SCOPED_TRACE(batching == AttentionBatching::kPadded ? "padded" : "equal-length");
    CheckPackedEqualsOnePromptAtATime(batching, {7, 5, 5, 5, 12, 1}, /*chunk=*/3);
  }
}

// Padded groups beside a slice, out of forward order: 1100 tokens pad too much (1.2M score entries, over
// kAttentionFreePadding) to share a group with 5 and 3, so it runs first, read in place; 5 and 3 are gathered into a
// group of length 5; the outputs are put back in forward order.
TEST_P(PackingTest, PaddedGroupsBesideASliceOutOfOrder) {
  // The grouping does not depend on the model; GQA (the mask repeated per query head group) is the variant that
  // covers most, and recording every hook point of an 1100-token prompt takes about a second per variant.
  if (std::string(GetParam()) != "rope_gqa") GTEST_SKIP() << "run on rope_gqa only";
  ForwardOptions o;
  o.segments = {5, 1100, 3};
  o.attn_batching = AttentionBatching::kPadded;
  auto seg = MakeSegments(model_->config(), 1108, o);
  ASSERT_TRUE(seg.ok()) << seg.status();
  ASSERT_EQ(seg->groups.size(), 2u);
  EXPECT_EQ(seg->groups[0].pad_offset, -1);
  EXPECT_EQ(seg->groups[1].pad_offset, 0);
  EXPECT_FALSE(seg->unpad_rows.empty());
  CheckPackedEqualsOnePromptAtATime(AttentionBatching::kPadded, {5, 1100, 3}, /*chunk=*/512);
}

void PackingTest::CheckPackedEqualsOnePromptAtATime(AttentionBatching batching, const std::vector<int64_t>& lengths,
                                                    int64_t chunk) {
  const LlamaConfig& c = model_->config();
  const auto prompts = Prompts(c.vocab_size, lengths);
  std::vector<int64_t> all, lens;
  for (const auto& p : prompts) {
    all.insert(all.end(), p.begin(), p.end());
    lens.push_back(static_cast<int64_t>(p.size()));
  }
  std::vector<std::unique_ptr<Recorder>> packed_rec;
  std::vector<const HookSet*> hooks;
  for (int64_t n : lens) {
    packed_rec.push_back(std::make_unique<Recorder>(c.num_hidden_layers, n));
    hooks.push_back(&packed_rec.back()->hooks);
  }
  ForwardOptions po;
  po.segments = lens;
  po.segment_hooks = hooks;
  po.return_target_nll = true;
  po.attn_query_chunk = chunk;  // 3: several query chunks per prompt, a partial last one
  po.attn_batching = batching;
  auto packed = model_->Forward(Ids(all), po);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_EQ(packed->logits.size(0), static_cast<int64_t>(all.size()));

  int64_t row = 0, nll_row = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t T = lens[i];
    Recorder one_rec(c.num_hidden_layers, T);
    ForwardOptions o;
    o.hooks = &one_rec.hooks;
    o.return_target_nll = true;
    auto one = model_->Forward(Ids(prompts[i]), o);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_LE(RelErr(packed->logits.narrow(0, row, T), one->logits), kTol) << "prompt " << i;
    ASSERT_EQ(one->target_nll.numel(), T - 1);
    if (T > 1) {
      EXPECT_LE(RelErr(packed->target_nll.narrow(0, nll_row, T - 1), one->target_nll), kTol) << "prompt " << i;
    }
    ASSERT_EQ(packed_rec[i]->acts.size(), one_rec.acts.size());
    for (const auto& [name, x] : one_rec.acts) {
      ASSERT_TRUE(packed_rec[i]->acts.count(name)) << name;
      EXPECT_LE(RelErr(packed_rec[i]->acts.at(name), x), kTol) << "prompt " << i << " " << name;
    }
    row += T;
    nll_row += T - 1;
  }
  EXPECT_EQ(packed->target_nll.numel(), nll_row);
}

TEST_P(PackingTest, InterventionsReachOnlyTheirPrompt) {
  for (AttentionBatching batching : {AttentionBatching::kEqualLength, AttentionBatching::kPadded}) {
    SCOPED_TRACE(batching == AttentionBatching::kPadded ? "padded" : "equal-length");
    CheckInterventionsReachOnlyTheirPrompt(batching);
  }
}

void PackingTest::CheckInterventionsReachOnlyTheirPrompt(AttentionBatching batching) {
  const LlamaConfig& c = model_->config();
  const auto prompts = Prompts(c.vocab_size);
  // Prompt 2 gets its BOS MLP output zeroed at layer 0 and its layer-1 queries scaled; the others run clean.
  auto edit = [](HookSet* h) {
    h->Intervene("blocks.0.hook_mlp_out", [](const HookPoint&, const at::Tensor& x) {
      at::Tensor y = x.clone();
      y.select(0, 0).zero_();
      return y;
    });
    h->Intervene("blocks.1.attn.hook_q", [](const HookPoint&, const at::Tensor& x) { return x * 3.0; });
  };
  HookSet edited;
  edit(&edited);
  std::vector<int64_t> all, lens;
  std::vector<const HookSet*> hooks;
  for (size_t i = 0; i < prompts.size(); ++i) {
    all.insert(all.end(), prompts[i].begin(), prompts[i].end());
    lens.push_back(static_cast<int64_t>(prompts[i].size()));
    hooks.push_back(i == 2 ? &edited : nullptr);
  }
  ForwardOptions po;
  po.segments = lens;
  po.segment_hooks = hooks;
  po.attn_batching = batching;
  auto packed = model_->Forward(Ids(all), po);
  ASSERT_TRUE(packed.ok()) << packed.status();
  int64_t row = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ForwardOptions o;
    o.hooks = i == 2 ? &edited : nullptr;
    auto one = model_->Forward(Ids(prompts[i]), o);
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_LE(RelErr(packed->logits.narrow(0, row, lens[i]), one->logits), kTol) << "prompt " << i;
    row += lens[i];
  }
  // And the edit did change prompt 2 (so the check above is not vacuous).
  auto clean = model_->Forward(Ids(prompts[2]), ForwardOptions{});
  ASSERT_TRUE(clean.ok());
  EXPECT_GT(RelErr(packed->logits.narrow(0, 7 + 5, 5), clean->logits), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Variants, PackingTest, ::testing::Values("rope_mha", "rope_gqa", "nope", "qk_norm"));

std::vector<std::vector<size_t>> Members(const std::vector<AttentionGroup>& groups) {
  std::vector<std::vector<size_t>> m;
  for (const AttentionGroup& g : groups) m.push_back(g.members);
  return m;
}

TEST(AttentionGroups, EqualLengthRunsOrPaddedGroupsLongestFirst) {
  using V = std::vector<std::vector<size_t>>;
  // Equal lengths: runs of consecutive equal lengths, in order, read in place.
  auto eq = PlanAttentionGroups({7, 5, 5, 5, 12, 5}, AttentionBatching::kEqualLength);
  EXPECT_EQ(Members(eq), (V{{0}, {1, 2, 3}, {4}, {5}}));
  for (const AttentionGroup& g : eq) EXPECT_EQ(g.pad_offset, -1);
  EXPECT_EQ(eq[1].len, 5);
  // Padded, short prompts: their padding is far below kAttentionFreePadding entries, so one group.
  auto one = PlanAttentionGroups({7, 5, 5, 5, 12, 1}, AttentionBatching::kPadded);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].members, (std::vector<size_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(one[0].len, 12);
  EXPECT_EQ(one[0].pad_offset, 0);
  // Padded, long prompts: by length 2000, 2000, 1900, 1500 (padding 2.14M entries <= a quarter of their 13.86M);
  // 1000 would make it 5.14M > 3.72M, so it starts the next group, with 990.
  auto two = PlanAttentionGroups({2000, 1900, 1000, 990, 2000, 1500}, AttentionBatching::kPadded);
  EXPECT_EQ(Members(two), (V{{0, 1, 4, 5}, {2, 3}}));
  EXPECT_EQ(two[0].len, 2000);
  EXPECT_EQ(two[0].pad_offset, 0);
  EXPECT_EQ(two[1].len, 1000);
  EXPECT_EQ(two[1].pad_offset, 4 * 2000);  // after the first gathered group
  // Consecutive equal lengths in padded mode stay a slice.
  auto same = PlanAttentionGroups({4, 4, 4}, AttentionBatching::kPadded);
  ASSERT_EQ(same.size(), 1u);
  EXPECT_EQ(same[0].pad_offset, -1);
  EXPECT_TRUE(PlanAttentionGroups({}, AttentionBatching::kPadded).empty());
}

TEST(AttentionGroups, SegmentsGatherPaddedRowsAndRestoreTheForwardOrder) {
  LlamaConfig cfg;
  cfg.max_position_embeddings = 64;
  ForwardOptions o;
  o.segments = {3, 1, 2};
  // Equal lengths: three slices in order, nothing gathered or reordered.
  auto eq = MakeSegments(cfg, 6, o);
  ASSERT_TRUE(eq.ok()) << eq.status();
  EXPECT_TRUE(eq->pad_rows.empty());
  EXPECT_TRUE(eq->unpad_rows.empty());
  // Padded: one group [0 1 2] of length 3; prompt 1 (row 3) and prompt 2 (rows 4, 5) are padded with their first row.
  o.attn_batching = AttentionBatching::kPadded;
  auto pad = MakeSegments(cfg, 6, o);
  ASSERT_TRUE(pad.ok()) << pad.status();
  EXPECT_EQ(pad->pad_rows, (std::vector<int64_t>{0, 1, 2, 3, 3, 3, 4, 5, 4}));
  EXPECT_EQ(pad->unpad_rows, (std::vector<int64_t>{0, 1, 2, 3, 6, 7}));
  // A slice first (2000 alone: padding 1 to it would cost 4M entries), then prompts 0 and 2 gathered (length 1).
  cfg.max_position_embeddings = 4096;
  o.segments = {1, 2000, 1};
  auto mixed = MakeSegments(cfg, 2002, o);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(mixed->pad_rows, (std::vector<int64_t>{0, 2001}));
  std::vector<int64_t> want = {2000};
  for (int64_t t = 0; t < 2000; ++t) want.push_back(t);
  want.push_back(2001);
  EXPECT_EQ(mixed->unpad_rows, want);
  // Two slices out of forward order: nothing gathered, the outputs reordered.
  o.segments = {1, 1, 2000, 2000};
  auto slices = MakeSegments(cfg, 4002, o);
  ASSERT_TRUE(slices.ok()) << slices.status();
  EXPECT_TRUE(slices->pad_rows.empty());
  ASSERT_EQ(slices->unpad_rows.size(), 4002u);
  EXPECT_EQ(slices->unpad_rows[0], 4000);
  EXPECT_EQ(slices->unpad_rows[1], 4001);
  EXPECT_EQ(slices->unpad_rows[2], 0);
  EXPECT_EQ(slices->unpad_rows[4001], 3999);
}

TEST(PackingErrors, BadSegmentsAreRejected) {
  ASSERT_FALSE(FixtureDir().empty()) << testing::FixtureError();
  LoadOptions lo;
  lo.device = testing::TestDevice();
  auto m = LlamaModel::Load(FixtureDir() + "/rope_mha", lo);
  ASSERT_TRUE(m.ok()) << m.status();
  const at::Tensor ids = Ids({1, 2, 3, 4, 5, 6});
  struct Case {
    std::vector<int64_t> segments;
    size_t hooks;
    const char* needle;
  };
  HookSet empty;
  for (const Case& c : {Case{{2, 3}, 0, "segments sum to 5 tokens, ids has T=6"},
                        Case{{3, 0, 3}, 0, "segments[1] = 0"},
                        Case{{3, 3}, 3, "segment_hooks has 3 entries for 2 segments"}}) {
    ForwardOptions o;
    o.segments = c.segments;
    o.segment_hooks.assign(c.hooks, &empty);
    auto r = (*m)->Forward(ids, o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.needle;
    EXPECT_NE(std::string(r.status().message()).find(c.needle), std::string::npos) << r.status();
  }
  // A prompt longer than the context is refused even when the packed total is what counts for memory.
  const int64_t max = (*m)->config().max_position_embeddings;
  std::vector<int64_t> long_ids(static_cast<size_t>(max + 1), 1);
  ForwardOptions o;
  o.segments = {max + 1};
  auto r = (*m)->Forward(Ids(long_ids), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(r.status().message()).find("max_position_embeddings"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace sinkscope::model
