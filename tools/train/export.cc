#include "tools/train/export.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/util/sha256.h"
#include "tools/train/data.h"

namespace sinkscope::train {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string SafetensorsBytes(const std::vector<const TensorBytes*>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (const TensorBytes* t : tensors) {
    header[t->name] = {{"dtype", t->dtype}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->data.size()}}};
    offset += t->data.size();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + h.size() + offset);
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += h;
  for (const TensorBytes* t : tensors) out += t->data;
  return out;
}

std::string HfConfigJson(const model::LlamaConfig& cfg) {
  const bool drope = cfg.model_type == "llama_drope";
  ojson j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = cfg.model_type;
  if (drope) j["attention_type"] = model::AttentionTypeName(cfg.attention_type);
  j["vocab_size"] = cfg.vocab_size;
  j["hidden_size"] = cfg.hidden_size;
  j["intermediate_size"] = cfg.intermediate_size;
  j["num_hidden_layers"] = cfg.num_hidden_layers;
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["num_key_value_heads"] = cfg.num_key_value_heads;
  j["head_dim"] = cfg.head_dim;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["rms_norm_eps"] = cfg.rms_norm_eps;
  j["rope_theta"] = cfg.rope_theta;
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["torch_dtype"] = cfg.torch_dtype;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  return j.dump(2) + "\n";
}

std::string GenerationConfigJson(const model::LlamaConfig& cfg) {
  ojson j;
  j["_from_model_config"] = true;
  j["bos_token_id"] = cfg.bos_token_id;
  j["eos_token_id"] = cfg.eos_token_id;
  return j.dump(2) + "\n";
}

absl::Status WriteHfDirectory(const std::string& dir, const model::LlamaConfig& cfg,
                              const std::vector<TensorBytes>& tensors, const ExportOptions& opts) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model", 0) == 0 && (name.ends_with(".safetensors") || name == "model.safetensors.index.json"))
      fs::remove(e.path(), ec);
  }
  auto write = [&](const std::string& name, const std::string& bytes) {
    return WriteFileAtomic((fs::path(dir) / name).string(), bytes);
  };
  if (absl::Status s = write("config.json", HfConfigJson(cfg)); !s.ok()) return s;
  if (absl::Status s = write("generation_config.json", GenerationConfigJson(cfg)); !s.ok()) return s;

  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  const int shards = std::max(1, opts.shards);
  if (shards == 1) {
    std::vector<const TensorBytes*> all;
    for (const auto& t : tensors) all.push_back(&t);
    if (absl::Status s = write("model.safetensors", SafetensorsBytes(all, meta)); !s.ok()) return s;
  } else {
    uint64_t total = 0;
    for (const auto& t : tensors) total += t.data.size();
    std::vector<std::vector<const TensorBytes*>> groups(shards);
    uint64_t acc = 0;
    for (const auto& t : tensors) {
      // Shard of a tensor: by the byte position of its middle, so shards get about total/shards bytes each.
      const uint64_t mid = acc + t.data.size() / 2;
      const int g = std::min<int>(shards - 1, static_cast<int>(mid * shards / std::max<uint64_t>(1, total)));
      groups[g].push_back(&t);
      acc += t.data.size();
    }
    ojson index;
    index["metadata"] = {{"total_size", total}};
    ojson wm = ojson::object();
    for (int g = 0; g < shards; ++g) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", g + 1, shards);
      for (const TensorBytes* t : groups[g]) wm[t->name] = name;
      if (absl::Status s = write(name, SafetensorsBytes(groups[g], meta)); !s.ok()) return s;
    }
    index["weight_map"] = wm;
    if (absl::Status s = write("model.safetensors.index.json", index.dump(2) + "\n"); !s.ok()) return s;
  }
  if (!opts.tokenizer_dir.empty()) {
    for (const char* name : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
      auto bytes = ReadFile((fs::path(opts.tokenizer_dir) / name).string());
      if (!bytes.ok()) return bytes.status();
      if (absl::Status s = write(name, *bytes); !s.ok()) return s;
    }
  }
  for (const auto& [name, content] : opts.extra_files)
    if (absl::Status s = write(name, content); !s.ok()) return s;
  return WriteSha256Sums(dir);
}

namespace {
absl::StatusOr<std::vector<std::string>> RegularFiles(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().filename() != "SHA256SUMS") names.push_back(e.path().filename().string());
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  return names;
}
}  // namespace

absl::Status WriteSha256Sums(const std::string& dir) {
  auto names = RegularFiles(dir);
  if (!names.ok()) return names.status();
  std::string out;
  for (const std::string& n : *names) {
    auto h = util::Sha256File((fs::path(dir) / n).string());
    if (!h.ok()) return h.status();
    absl::StrAppend(&out, *h, "  ", n, "\n");
  }
  return WriteFileAtomic((fs::path(dir) / "SHA256SUMS").string(), out);
}

absl::Status VerifySha256Sums(const std::string& dir) {
  auto text = ReadFile((fs::path(dir) / "SHA256SUMS").string());
  if (!text.ok()) return text.status();
  std::map<std::string, std::string> listed;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    const size_t sp = line.find("  ");
    if (sp != 64) return absl::DataLossError(absl::StrCat(dir, "/SHA256SUMS: malformed line \"", line, "\""));
    listed[std::string(line.substr(66))] = std::string(line.substr(0, 64));
  }
  auto names = RegularFiles(dir);
  if (!names.ok()) return names.status();
  for (const std::string& n : *names)
    if (!listed.count(n)) return absl::DataLossError(absl::StrCat(dir, "/", n, " is not listed in SHA256SUMS"));
  for (const auto& [name, want] : listed) {
    auto got = util::Sha256File((fs::path(dir) / name).string());
    if (!got.ok()) return absl::DataLossError(absl::StrCat(dir, "/", name, " listed in SHA256SUMS: ", got.status().message()));
    if (*got != want)
      return absl::DataLossError(absl::StrCat(dir, "/", name, ": sha256 ", *got, " != SHA256SUMS ", want));
  }
  return absl::OkStatus();
}

}  // namespace sinkscope::train
