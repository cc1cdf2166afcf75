// safetensors parsing/validation and LlamaModel::Load error handling: every broken input is a clear absl error
// naming the file and tensor, never a crash.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/engine/fixtures.h"

namespace sinkscope::model {
namespace {

using nlohmann::json;
using testing::CopyDir;
using testing::FixtureDir;
using testing::ReadFile;
using testing::ScratchDir;
using testing::WriteFile;

// Builds a safetensors byte string from a header JSON and a data section.
std::string MakeSt(const std::string& header, const std::string& data, int64_t declared_len = -1) {
  uint64_t n = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

absl::Status ParseBytes(const std::string& b) {
  return ParseSafetensors(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "buf.safetensors").status();
}

void ExpectErr(const absl::Status& st, absl::StatusCode code, std::initializer_list<std::string> needles) {
  EXPECT_EQ(st.code(), code) << st;
  for (const auto& n : needles) EXPECT_NE(std::string(st.message()).find(n), std::string::npos) << "want \"" << n << "\" in: " << st;
}

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(FixtureDir().empty()) << testing::FixtureError(); }
  std::string Fresh(const std::string& variant) { return CopyDir(FixtureDir() + "/" + variant, ScratchDir(variant)); }
  // Rewrites the header of a safetensors file through `edit`, keeping the data section.
  void EditHeader(const std::string& path, const std::function<void(json&)>& edit) {
    std::string b = ReadFile(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
    json h = json::parse(b.substr(8, n));
    edit(h);
    WriteFile(path, MakeSt(h.dump(), b.substr(8 + n)));
  }
};

TEST(DeviceMemory, HostMemoryForCpuAndClearErrorsOtherwise) {
  // What the server sizes the memory budgets from (server/registry.h MemoryPolicy).
  auto cpu = DeviceMemoryBytes("cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(*cpu, static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
  auto tpu = DeviceMemoryBytes("tpu:0");
  EXPECT_EQ(tpu.status().code(), absl::StatusCode::kInvalidArgument) << tpu.status();
  EXPECT_NE(tpu.status().message().find("expected cpu, cuda or cuda:N"), std::string::npos) << tpu.status();
  if (!CudaAvailable()) {  // a CPU-only LibTorch says so instead of guessing
    auto cuda = DeviceMemoryBytes("cuda:0");
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
  } else {
    auto cuda = DeviceMemoryBytes("cuda:0");
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    EXPECT_GT(*cuda, int64_t{1} << 30);
  }
}

TEST(DeviceMemory, CheckDeviceSaysWhyADeviceCannotBeUsed) {
  EXPECT_TRUE(CheckDevice("cpu").ok());
  EXPECT_EQ(CheckDevice("tpu:0").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckDevice("cuda:x").code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<int> n = CudaDeviceCount();
  if (!CudaAvailable()) {
    // A CPU-only LibTorch (Debian's) is named with its version; a CUDA LibTorch on a machine without a usable GPU
    // (deploy/gpu/chroot-dry-run.sh --torch cuda) gives the CUDA runtime's own error.
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition);
    const absl::Status st = CheckDevice("cuda:1");
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_EQ(st.message().rfind("cuda:1: ", 0), 0u) << st;
    const bool cpu_build = st.message().find(absl::StrCat("LibTorch (", TorchVersion(), ") was built without CUDA")) !=
                           std::string::npos;
    const bool runtime_error = st.message().find("the CUDA runtime finds no usable GPU (cudaGetDeviceCount: error ") !=
                               std::string::npos;
    EXPECT_TRUE(cpu_build != runtime_error) << st;
    return;
  }
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_GE(*n, 1);
  EXPECT_TRUE(CheckDevice("cuda").ok());
  EXPECT_TRUE(CheckDevice(absl::StrCat("cuda:", *n - 1)).ok());
  const std::string past = absl::StrCat("cuda:", *n);  // one past the last visible device
  const absl::Status st = CheckDevice(past);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find(absl::StrCat("only ", *n, " CUDA device")), std::string::npos) << st;
  EXPECT_EQ(DeviceMemoryBytes(past).status().code(), absl::StatusCode::kFailedPrecondition);
  LoadOptions o;
  o.device = past;
  ExpectErr(LlamaModel::Load(FixtureDir() + "/tied", o).status(), absl::StatusCode::kFailedPrecondition,
            {past, "visible"});
}

TEST(Safetensors, ParsesAndValidatesBuffers) {
  std::string data(24, '\0');
  const std::string good = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]},"__metadata__":{"format":"pt"}})";
  std::map<std::string, std::string> meta;
  auto ok = ParseSafetensors(reinterpret_cast<const uint8_t*>(MakeSt(good, data).data()), 8 + good.size() + 24, "x",
                             &meta);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 2u);
  EXPECT_EQ(meta["format"], "pt");
  EXPECT_EQ((*ok)[1].dtype, StDtype::kBF16);
  EXPECT_EQ((*ok)[0].numel(), 4);

  ExpectErr(ParseBytes("abc"), absl::StatusCode::kDataLoss, {"buf.safetensors", "too short"});
  ExpectErr(ParseBytes(MakeSt(good, data, 1 << 20)), absl::StatusCode::kDataLoss, {"header length 1048576", "past the end"});
  ExpectErr(ParseBytes(MakeSt(good, data, 0)), absl::StatusCode::kDataLoss, {"header length is 0"});
  ExpectErr(ParseBytes(MakeSt(good, data, int64_t{1} << 40)), absl::StatusCode::kDataLoss, {"100 MiB"});
  ExpectErr(ParseBytes(MakeSt("{\"a\": [", data)), absl::StatusCode::kDataLoss, {"not valid JSON"});
  ExpectErr(ParseBytes(MakeSt("[1]", data)), absl::StatusCode::kDataLoss, {"not a JSON object"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F33","shape":[4],"data_offsets":[0,16]}})", data)),
            absl::StatusCode::kDataLoss, {"tensor a", "unknown dtype \"F33\""});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", data)),
            absl::StatusCode::kDataLoss, {"tensor a", "run past the data section"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})", data)),
            absl::StatusCode::kDataLoss, {"tensor a", "needs 20 bytes", "span 16"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                              data)),
            absl::StatusCode::kDataLoss, {"overlap"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", data)),
            absl::StatusCode::kDataLoss, {"begin > end"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data)),
            absl::StatusCode::kDataLoss, {"negative"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}})", data)),
            absl::StatusCode::kDataLoss, {"impossibly large"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4]}})", data)), absl::StatusCode::kDataLoss,
            {"data_offsets"});
  ExpectErr(ParseBytes(MakeSt(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[-1,15]}})", data)),
            absl::StatusCode::kDataLoss, {"non-negative"});
  ExpectErr(ParseBytes(MakeSt(R"({"__metadata__":{"x":1}})", data)), absl::StatusCode::kDataLoss, {"__metadata__"});
}

TEST(Safetensors, FuzzedHeadersNeverCrash) {
  // Random byte flips in a valid file's header: every outcome is OK or a DataLoss error, never a crash.
  const std::string header = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                             R"("v":{"dtype":"F16","shape":[3],"data_offsets":[24,30]}})";
  const std::string base = MakeSt(header, std::string(30, '\x01'));
  uint64_t s = 12345;
  int errors = 0;
  for (int it = 0; it < 3000; ++it) {
    std::string b = base;
    int flips = 1 + it % 4;
    for (int f = 0; f < flips; ++f) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      size_t pos = (s >> 33) % b.size();
      b[pos] = static_cast<char>(s >> 13);
    }
    if (it % 7 == 0) b.resize((s >> 40) % b.size());
    absl::Status st = ParseBytes(b);
    if (!st.ok()) {
      ++errors;
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    }
  }
  EXPECT_GT(errors, 1000);
}

TEST_F(LoadTest, LoadsShardedWithNotesDigestAndZeroCopy) {
  const std::string dir = FixtureDir() + "/rope_mha";
  auto m = LlamaModel::Load(dir, {});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config().num_hidden_layers, 2);
  EXPECT_EQ((*m)->device(), "cpu");
  EXPECT_EQ((*m)->dtype(), "float32");
  EXPECT_EQ((*m)->dir(), dir);
  // Digest = sha256 of the shard files concatenated in name order, computed independently by hashlib.
  std::string want = ReadFile(FixtureDir() + "/rope_mha.sha256");
  want.erase(want.find_last_not_of("\n") + 1);
  EXPECT_EQ((*m)->weights_digest(), want);
  // rotary_emb.inv_freq buffers are extra: ignored with a note each.
  int inv = 0;
  for (const auto& n : (*m)->load_notes()) inv += n.find("rotary_emb.inv_freq") != std::string::npos;
  EXPECT_EQ(inv, 2);
  // Weight bytes: every parameter in fp32 (no inv_freq).
  EXPECT_EQ((*m)->weight_bytes(), (*m)->config().num_parameters() * 4);
  // fp32 checkpoint + fp32 compute on CPU => weights alias the file mapping (address inside a mapping of a shard).
  const auto addr = reinterpret_cast<uintptr_t>((*m)->weights().layers[1].q_proj.data_ptr());
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool inside = false;
  while (std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    if (addr >= lo && addr < hi && line.find(".safetensors") != std::string::npos) inside = true;
  }
  EXPECT_TRUE(inside) << "q_proj is not backed by the safetensors mapping";
  // The mapping outlives the model as long as a tensor references it.
  at::Tensor keep = (*m)->weights().layers[1].q_proj;
  const float first = keep.data_ptr<float>()[0];
  m->reset();
  EXPECT_EQ(keep.data_ptr<float>()[0], first);
  // In-place writes are copy-on-write and never reach the file.
  keep.data_ptr<float>()[0] = 12345.0f;
  auto again = LlamaModel::Load(dir, {});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->weights().layers[1].q_proj.data_ptr<float>()[0], first);
}

TEST_F(LoadTest, TiedAndSingleFileAndBf16) {
  auto t = LlamaModel::Load(FixtureDir() + "/tied", {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE((*t)->config().tie_word_embeddings);
  EXPECT_TRUE((*t)->weights().lm_head.is_same((*t)->weights().embed_tokens));
  EXPECT_EQ((*t)->weight_bytes(), (*t)->config().num_parameters() * 4);
  LoadOptions bf;
  bf.dtype = "bfloat16";
  auto b = LlamaModel::Load(FixtureDir() + "/rope_mha", bf);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*b)->dtype(), "bfloat16");
  EXPECT_EQ((*b)->weight_bytes(), (*b)->config().num_parameters() * 2);
  auto c = LlamaModel::Load(FixtureDir() + "/rope_bf16", {});  // BF16 checkpoint -> fp32 compute (converted)
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->dtype(), "float32");
  EXPECT_EQ((*c)->config().torch_dtype, "bfloat16");
  auto h = LlamaModel::Load(FixtureDir() + "/nope_f16", bf);  // F16 checkpoint (like Llama-2-7b-hf) -> bf16 compute
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ((*h)->dtype(), "bfloat16");
  EXPECT_EQ((*h)->weights().layers[0].q_proj.scalar_type(), at::kBFloat16);
  LoadOptions nodigest;
  nodigest.compute_digest = false;
  EXPECT_TRUE((*LlamaModel::Load(FixtureDir() + "/tied", nodigest))->weights_digest().empty());
}

TEST_F(LoadTest, UnalignedDataSectionIsCopiedNotAliased) {
  // A header whose length leaves the data section at an odd address (legal per the format, though HF pads to 8):
  // tensors cannot be wrapped in place and are copied instead; values must be identical.
  const std::string d = Fresh("tied");
  const std::string f = d + "/model.safetensors";
  std::string b = ReadFile(f);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
  std::string header = json::parse(b.substr(8, n)).dump();
  while ((8 + header.size()) % 4 != 1) header += ' ';
  WriteFile(f, MakeSt(header, b.substr(8 + n)));
  auto m = LlamaModel::Load(d, {});
  ASSERT_TRUE(m.ok()) << m.status();
  auto ref = LlamaModel::Load(FixtureDir() + "/tied", {});
  ASSERT_TRUE(ref.ok());
  const at::Tensor& a = (*m)->weights().layers[0].down_proj;
  const at::Tensor& r = (*ref)->weights().layers[0].down_proj;
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data_ptr()) % 4, 0u);
  ASSERT_EQ(a.numel(), r.numel());
  EXPECT_EQ(std::memcmp(a.data_ptr(), r.data_ptr(), a.numel() * 4), 0);
}

TEST_F(LoadTest, BadLoadOptions) {
  LoadOptions o;
  o.dtype = "float16";
  ExpectErr(LlamaModel::Load(FixtureDir() + "/tied", o).status(), absl::StatusCode::kInvalidArgument,
            {"float16", "cpu"});
  o.dtype = "int8";
  ExpectErr(LlamaModel::Load(FixtureDir() + "/tied", o).status(), absl::StatusCode::kInvalidArgument, {"int8"});
  o = {};
  o.device = "tpu:7";
  EXPECT_FALSE(LlamaModel::Load(FixtureDir() + "/tied", o).ok());
  o.device = "cuda";
  if (!CudaAvailable())
    ExpectErr(LlamaModel::Load(FixtureDir() + "/tied", o).status(), absl::StatusCode::kFailedPrecondition,
              {"cuda: ", std::string(CudaDeviceCount().status().message())});
  ExpectErr(LlamaModel::Load("/nonexistent-sinkscope", {}).status(), absl::StatusCode::kNotFound, {"config.json"});
  const std::string empty = ScratchDir("nockpt");
  WriteFile(empty + "/config.json", ReadFile(FixtureDir() + "/tied/config.json"));
  ExpectErr(LlamaModel::Load(empty, {}).status(), absl::StatusCode::kNotFound,
            {"no model.safetensors or model.safetensors.index.json"});
}

TEST_F(LoadTest, TruncatedShard) {
  const std::string d = Fresh("rope_mha");
  const std::string f = d + "/model-00002-of-00002.safetensors";
  std::string b = ReadFile(f);
  WriteFile(f, b.substr(0, b.size() - 100));
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss,
            {"model-00002-of-00002.safetensors", "tensor ", "run past the data section"});
  WriteFile(f, b.substr(0, 5));
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"model-00002-of-00002.safetensors", "too short"});
  WriteFile(f, "");
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"model-00002-of-00002.safetensors"});
}

TEST_F(LoadTest, CorruptHeaderJsonAndLength) {
  const std::string d = Fresh("rope_mha");
  const std::string f = d + "/model-00001-of-00002.safetensors";
  std::string b = ReadFile(f);
  std::string c = b;
  c[8] = '[';
  c[9] = '}';
  WriteFile(f, c);
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"model-00001-of-00002.safetensors", "JSON"});
  c = b;
  c[5] = '\x01';  // header length ~2^40
  WriteFile(f, c);
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"model-00001-of-00002.safetensors", "header length"});
  c = b;
  uint64_t n = b.size();  // header length beyond the file
  for (int i = 0; i < 8; ++i) c[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  WriteFile(f, c);
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"model-00001-of-00002.safetensors", "past the end"});
}

TEST_F(LoadTest, OffsetsOutOfRangeAndOverlapping) {
  std::string d = Fresh("rope_mha");
  std::string f = d + "/model-00002-of-00002.safetensors";
  EditHeader(f, [](json& h) {
    h["model.norm.weight"]["data_offsets"] = json::array({1u << 30, (1u << 30) + 256});
  });
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss,
            {"model-00002-of-00002.safetensors", "model.norm.weight", "past the data section"});
  d = Fresh("rope_mha");
  f = d + "/model-00002-of-00002.safetensors";
  EditHeader(f, [](json& h) {
    uint64_t b = h["lm_head.weight"]["data_offsets"][0].get<uint64_t>();
    h["model.norm.weight"]["data_offsets"] = json::array({b + 64, b + 64 + 256});  // inside lm_head's bytes
  });
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss,
            {"model-00002-of-00002.safetensors", "lm_head.weight", "model.norm.weight", "overlap"});
}

TEST_F(LoadTest, WrongShapeAgainstConfig) {
  // Header says [V, d+?]: consistent file, but not what config.json implies.
  std::string d = Fresh("rope_mha");
  EditHeader(d + "/model-00002-of-00002.safetensors", [](json& h) {
    auto& e = h["model.norm.weight"];
    e["shape"] = json::array({32, 2});
  });
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kInvalidArgument,
            {"model-00002-of-00002.safetensors", "model.norm.weight", "[32, 2]", "config.json implies [64]"});
  // Config inconsistent with the files.
  d = Fresh("rope_mha");
  json cfg = json::parse(ReadFile(d + "/config.json"));
  cfg["intermediate_size"] = 128;
  WriteFile(d + "/config.json", cfg.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kInvalidArgument, {"mlp.gate_proj.weight", "[160, 64]"});
}

TEST_F(LoadTest, MissingTensor) {
  std::string d = Fresh("rope_mha");
  json idx = json::parse(ReadFile(d + "/model.safetensors.index.json"));
  idx["weight_map"].erase("model.layers.1.mlp.up_proj.weight");
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kNotFound,
            {"missing tensor model.layers.1.mlp.up_proj.weight"});
  // Index points at a shard that lacks the tensor.
  d = Fresh("rope_mha");
  idx = json::parse(ReadFile(d + "/model.safetensors.index.json"));
  idx["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss,
            {"model.safetensors.index.json", "model.norm.weight", "model-00001-of-00002.safetensors"});
  // Index points outside the directory / at a missing shard.
  idx["weight_map"]["model.norm.weight"] = "../evil.safetensors";
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"not a plain file name"});
  idx["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors";
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kNotFound, {"model-00009-of-00009.safetensors"});
  WriteFile(d + "/model.safetensors.index.json", "{\"weight_map\": 3}");
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss, {"weight_map"});
  // QK-norm DroPE without its norms.
  d = Fresh("qk_norm");
  idx = json::parse(ReadFile(d + "/model.safetensors.index.json"));
  idx["weight_map"].erase("model.layers.0.self_attn.k_norm.weight");
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kNotFound,
            {"model.layers.0.self_attn.k_norm.weight", "qk_norm_nope"});
  // Untied model without lm_head.
  d = Fresh("rope_mha");
  idx = json::parse(ReadFile(d + "/model.safetensors.index.json"));
  idx["weight_map"].erase("lm_head.weight");
  WriteFile(d + "/model.safetensors.index.json", idx.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kNotFound, {"lm_head.weight"});
}

TEST_F(LoadTest, BadDtype) {
  std::string d = Fresh("rope_mha");
  EditHeader(d + "/model-00002-of-00002.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "I32"; });
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kInvalidArgument,
            {"model-00002-of-00002.safetensors", "model.norm.weight", "dtype I32"});
  d = Fresh("rope_mha");
  EditHeader(d + "/model-00002-of-00002.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "FP32"; });
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kDataLoss,
            {"model-00002-of-00002.safetensors", "model.norm.weight", "unknown dtype \"FP32\""});
}

TEST_F(LoadTest, BadConfigInCheckpointDir) {
  std::string d = Fresh("tied");
  json cfg = json::parse(ReadFile(d + "/config.json"));
  cfg["num_key_value_heads"] = 3;
  WriteFile(d + "/config.json", cfg.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kInvalidArgument,
            {d + "/config.json", "num_key_value_heads (3)"});
  cfg["num_key_value_heads"] = 4;
  cfg["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "factor": 8.0})");
  WriteFile(d + "/config.json", cfg.dump());
  ExpectErr(LlamaModel::Load(d, {}).status(), absl::StatusCode::kInvalidArgument, {"rope_scaling"});
}

}  // namespace
}  // namespace sinkscope::model
