#include "tests/engine/fixtures.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/model/safetensors.h"
#include "common/util/file.h"
#include "nlohmann/json.hpp"

namespace sinkscope::testing {
namespace fs = std::filesystem;
namespace {

std::string g_dir, g_error;
nlohmann::json g_manifest;

void RemoveFixtures() {
  if (!g_dir.empty() && std::getenv("SINKSCOPE_KEEP_FIXTURES") == nullptr) {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  }
}

void Generate() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/sinkscope-engine-XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    g_error = "mkdtemp failed";
    return;
  }
  const std::string dir = buf.data();
  const std::string cmd = absl::StrCat(SINKSCOPE_PYTHON, " ", SINKSCOPE_REFERENCE_DIR, "/gen_fixtures.py --out ",
                                       dir, " 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  if (p != nullptr) {
    char line[512];
    while (fgets(line, sizeof line, p) != nullptr) out += line;
  }
  int rc = p ? pclose(p) : -1;
  if (rc != 0) {
    g_error = absl::StrCat("fixture generation failed (", cmd, ", rc=", rc, "):\n", out);
    return;
  }
  std::ifstream in(dir + "/manifest.json");
  try {
    g_manifest = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    g_error = absl::StrCat("bad manifest: ", e.what());
    return;
  }
  g_dir = dir;
  std::atexit(RemoveFixtures);
}

}  // namespace

const std::string& FixtureDir() {
  static std::once_flag once;
  std::call_once(once, Generate);
  return g_dir;
}
const std::string& FixtureError() {
  FixtureDir();
  return g_error;
}

std::vector<int64_t> VariantIds(const std::string& variant) {
  FixtureDir();
  return g_manifest["variants"][variant]["ids"].get<std::vector<int64_t>>();
}

std::vector<Ablation> VariantAblations(const std::string& variant) {
  FixtureDir();
  std::vector<Ablation> v;
  for (const auto& a : g_manifest["variants"][variant]["ablations"])
    v.push_back({a["hook"].get<std::string>(), a["pos"].get<int64_t>(), a["file"].get<std::string>()});
  return v;
}

std::map<std::string, at::Tensor> ReadTensors(const std::string& path) {
  std::map<std::string, at::Tensor> out;
  auto f = model::SafetensorsFile::Open(path);
  if (!f.ok()) {
    ADD_FAILURE_AT(__FILE__, __LINE__);
    return out;
  }
  for (const auto& t : (*f)->tensors()) {
    at::ScalarType st = t.dtype_str == "F32"    ? at::kFloat
                        : t.dtype_str == "F16"  ? at::kHalf
                        : t.dtype_str == "BF16" ? at::kBFloat16
                                                : at::kLong;
    at::Tensor x = at::empty(t.shape, at::TensorOptions().dtype(st));
    std::memcpy(x.data_ptr(), t.data, t.nbytes());
    out[t.name] = x;
  }
  return out;
}

std::string ScratchDir(const std::string& tag) {
  static int counter = 0;
  std::string d = absl::StrCat(FixtureDir(), "/scratch-", tag, "-", counter++);
  fs::create_directories(d);
  return d;
}

std::string CopyDir(const std::string& src, const std::string& dst) {
  fs::create_directories(dst);
  fs::copy(src, dst, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  return dst;
}

std::string ReadFile(const std::string& path) {
  absl::StatusOr<std::string> bytes = util::ReadFile(path);
  return bytes.ok() ? *bytes : std::string();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  const absl::Status st = util::WriteFileAtomic(path, bytes);
  EXPECT_TRUE(st.ok()) << st;
}

const std::string& TestDevice() {
  static const std::string device = [] {
    const char* d = std::getenv("SINKSCOPE_TEST_DEVICE");
    return std::string(d != nullptr && *d != '\0' ? d : "cpu");
  }();
  return device;
}

double RelErr(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  double den = std::max(y.abs().max().item<double>(), 1e-30);
  return (x - y).abs().max().item<double>() / den;
}

}  // namespace sinkscope::testing
