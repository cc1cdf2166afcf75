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
limits: {max_tokens_per_prompt: 512, max_prompts_per_job: 10, max_queued_jobs: 3, pack_tokens: 0}
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
      {"models: [{name: a, path: p}]\nlimits: {max_queued_jobs: many}", "limits.max_queued_jobs: expected an integer"},
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
