#include <gtest/gtest.h>

#include "server/config.h"

using sinkscope::server::ParseServerConfig;

TEST(ServerConfig, ParsesModelsLimitsAndResolvesRelativePaths) {
  auto c = ParseServerConfig(R"(
models:
  - name: tiny-rope
    path: ../models/tiny-rope
    dtype: bfloat16
    description: "a model"
  - {name: abs, path: /abs/dir, device: cuda:1}
  - {name: nodigest, path: x, digest: false}
datasets_dir: data
limits: {max_tokens_per_prompt: 512, max_prompts_per_job: 10, max_queued_jobs: 3, pack_tokens: 0,
         max_tokens_per_job: 30000000000, max_planned_passes: 77, forward_memory_bytes: 8589934592,
         residual_memory_bytes: 0, max_request_bytes: 65536, attention: padded}
)", "/srv/sinkscope/deploy");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->models.size(), 3u);
  EXPECT_EQ(c->models[0].path, "/srv/sinkscope/models/tiny-rope");
  EXPECT_EQ(c->models[0].dtype, "bfloat16");
  EXPECT_EQ(c->models[0].device, "cpu");
  EXPECT_EQ(c->models[1].path, "/abs/dir");
  EXPECT_EQ(c->models[1].device, "cuda:1");
  EXPECT_EQ(c->datasets_dir, "/srv/sinkscope/deploy/data");
  EXPECT_TRUE(c->models[0].digest);
  EXPECT_FALSE(c->models[2].digest);
  EXPECT_EQ(c->limits.max_tokens_per_prompt, 512);
  EXPECT_EQ(c->limits.max_prompts, 10);
  EXPECT_EQ(c->limits.pack_tokens, 0);
  EXPECT_EQ(c->limits.data_dir, "/srv/sinkscope/deploy/data");
  EXPECT_EQ(c->max_queued_jobs, 3);
  EXPECT_EQ(c->limits.max_tokens_per_job, 30'000'000'000);
  EXPECT_EQ(c->limits.max_planned_passes, 77);
  EXPECT_EQ(c->limits.forward_memory_bytes, int64_t{8} << 30);
  EXPECT_EQ(c->limits.residual_memory_bytes, 0);  // no budget: one wave
  EXPECT_EQ(c->max_request_bytes, 65536);
  EXPECT_EQ(c->limits.attention, sinkscope::job::RunLimits::Attention::kPadded);
  EXPECT_FALSE(c->forward_memory_auto);  // given: the server keeps it
  EXPECT_FALSE(c->residual_memory_auto);
  auto d = ParseServerConfig("models: [{name: a, path: p}]", "/tmp");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->forward_memory_auto);  // absent: the registry sizes them from each model's device
  EXPECT_TRUE(d->residual_memory_auto);
  EXPECT_EQ(d->limits.attention, sinkscope::job::RunLimits::Attention::kAuto);  // by device
  auto e = ParseServerConfig(
      "models: [{name: a, path: p}]\nlimits: {forward_memory_bytes: auto, residual_memory_bytes: 1048576}", "/tmp");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(e->forward_memory_auto);  // `auto` says so explicitly
  EXPECT_FALSE(e->residual_memory_auto);
  EXPECT_EQ(e->limits.residual_memory_bytes, 1 << 20);
}

TEST(ServerConfig, ErrorsNameTheKey) {
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"models: []", "'models' must be a non-empty list"},
      {"models: [{name: a}]", "models[0]: 'name' and 'path' are required"},
      {"models: [{name: a, path: p, dtype: int8}]", "models[0].dtype"},
      {"models: [{name: a, path: p, device: tpu}]", "models[0].device"},
      {"models: [{name: a, path: p, digest: maybe}]", "models[0].digest: expected true or false"},
      {"models: [{name: a, path: p}]\nlimits: {pack_tokens: -1}", "limits.pack_tokens: -1 out of range"},
      {"models: [{name: a, path: p}, {name: a, path: q}]", "models[1].name: duplicate"},
      {"models: [{name: a, path: p, colour: red}]", "unknown key 'colour'"},
      {"models: [{name: a, path: p}]\nlimits: {max_queued_jobs: -1}", "limits.max_queued_jobs"},
      {"models: [{name: a, path: p}]\nlimits: {max_request_bytes: 10}", "limits.max_request_bytes: 10 out of range"},
      {"models: [{name: a, path: p}]\nlimits: {max_tokens_per_job: 0}", "limits.max_tokens_per_job: 0 out of range"},
      {"models: [{name: a, path: p}]\nlimits: {forward_memory_bytes: -5}", "limits.forward_memory_bytes"},
      {"models: [{name: a, path: p}]\nlimits: {residual_memory_bytes: -1}", "limits.residual_memory_bytes"},
      {"models: [{name: a, path: p}]\nlimits: {residual_memory_bytes: lots}",
       "limits.residual_memory_bytes: expected a byte count or auto"},
      {"models: [{name: a, path: p}]\nlimits: {forward_memory_bytes: [1]}",
       "limits.forward_memory_bytes: expected a byte count or auto"},
      {"models: [{name: a, path: p}]\nlimits: {max_queued_jobs: many}", "limits.max_queued_jobs: expected an integer"},
      {"models: [{name: a, path: p}]\nlimits: {attention: sparse}",
       "limits.attention: 'sparse' (expected auto, equal or padded)"},
      {"models: [{name: 'a b', path: p}]", "models[0].name"},
      {"models: [{name: a, path: p}]\nports: 3", "unknown key 'ports'"},
      {"{{{", "YAML parse error"},
      {"- 1\n- 2", "top level must be a mapping"},
  };
  for (const auto& c : cases) {
    auto r = ParseServerConfig(c.yaml, "/tmp");
    ASSERT_FALSE(r.ok()) << c.yaml;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << c.yaml << " -> " << r.status();
  }
}

TEST(ServerConfig, MissingFileIsNotFound) {
  auto r = sinkscope::server::LoadServerConfig("/nonexistent/sinkscope.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
}

TEST(ServerConfig, StateBlock) {
  auto d = ParseServerConfig("models: [{name: a, path: p}]", "/tmp");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->state.requeue_interrupted);
  EXPECT_EQ(d->state.keep_finished, 1000);
  EXPECT_EQ(d->state.max_bytes, 0);
  EXPECT_EQ(d->state.max_age_days, 0);
  EXPECT_TRUE(d->state.cache);
  auto c = ParseServerConfig(
      "models: [{name: a, path: p}]\n"
      "state: {interrupted: fail, keep_finished: 10, max_bytes: 1000000000, max_age_days: 0.5, cache: false}",
      "/tmp");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->state.requeue_interrupted);
  EXPECT_EQ(c->state.keep_finished, 10);
  EXPECT_EQ(c->state.max_bytes, 1000000000);
  EXPECT_DOUBLE_EQ(c->state.max_age_days, 0.5);
  EXPECT_FALSE(c->state.cache);
  for (const auto& [yaml, expect] : std::vector<std::pair<std::string, std::string>>{
           {"state: {interrupted: retry}", "state.interrupted: 'retry' (expected requeue or fail)"},
           {"state: {keep_finished: 0}", "state.keep_finished: 0 must be >= 1"},
           {"state: {max_bytes: lots}", "state.max_bytes: expected an integer"},
           {"state: {max_age_days: -1}", "state.max_age_days: -1 must be >= 0"},
           {"state: {cache: perhaps}", "state.cache: expected true or false"},
           {"state: {dir: /var/lib}", "state: unknown key 'dir'"},
           {"state: 3", "state: must be a mapping"}}) {
    auto r = ParseServerConfig("models: [{name: a, path: p}]\n" + yaml, "/tmp");
    ASSERT_FALSE(r.ok()) << yaml;
    EXPECT_EQ(r.status().message(), expect) << yaml;
  }
}
