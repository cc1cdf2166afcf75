// Shared test fixtures for engine_tests: tiny random checkpoints + independent python reference outputs, generated
// once per test process by tests/reference/gen_fixtures.py into a temporary directory (removed at exit unless
// SINKSCOPE_KEEP_FIXTURES is set).
#pragma once

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"

namespace sinkscope::testing {

// Directory holding the fixtures (see gen_fixtures.py); empty string if generation failed (the error is in
// FixtureError()).
const std::string& FixtureDir();
const std::string& FixtureError();

// Token ids of a variant (from manifest.json).
std::vector<int64_t> VariantIds(const std::string& variant);
struct Ablation {
  std::string hook;
  int64_t pos;
  std::string file;
};
std::vector<Ablation> VariantAblations(const std::string& variant);

// Reads all tensors of a safetensors file (copies; F32/F16/BF16/I64).
std::map<std::string, at::Tensor> ReadTensors(const std::string& path);

// A fresh scratch directory under the fixture dir.
std::string ScratchDir(const std::string& tag);
// Recursively copies a checkpoint directory; returns the destination.
std::string CopyDir(const std::string& src, const std::string& dst);
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

// The device the engine tests run models on: $SINKSCOPE_TEST_DEVICE ("cuda", "cuda:1", ...), default "cpu".
// deploy/gpu-check.sh runs engine_tests and analysis_tests with it set on a GPU node.
const std::string& TestDevice();

// max|a - b| / max(max|b|, 1e-30); a and b are compared in float64 on the CPU (either may live on a GPU).
double RelErr(const at::Tensor& a, const at::Tensor& b);

// A test parameterised by a fixture variant name ("rope", "nope_gqa", ...), with that checkpoint loaded on
// TestDevice() into model_.
class FixtureModelTest : public ::testing::TestWithParam<const char*> {
 protected:
  static void SetUpTestSuite() { model::SetComputeThreads(2); }
  void SetUp() override {
    ASSERT_FALSE(FixtureDir().empty()) << FixtureError();
    model::LoadOptions lo;
    lo.device = TestDevice();
    auto m = model::LlamaModel::Load(FixtureDir() + "/" + GetParam(), lo);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *m;
  }
  std::shared_ptr<model::LlamaModel> model_;
};

}  // namespace sinkscope::testing
