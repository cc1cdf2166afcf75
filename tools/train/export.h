// Hugging Face snapshot export for sinkscope-train (torch-free): safetensors writer, config.json /
// generation_config.json, shard index, tokenizer files, SHA256SUMS manifest.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/config.h"

namespace sinkscope::train {

// One tensor's raw little-endian bytes. dtype is the safetensors string ("F32", "BF16", "F16").
struct TensorBytes {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string data;
};

// Safetensors file bytes: u64 LE header length, JSON header (tensors in the given order, offsets contiguous, an
// optional "__metadata__"), padded with spaces to a multiple of 8, then the data.
std::string SafetensorsBytes(const std::vector<const TensorBytes*>& tensors,
                             const std::map<std::string, std::string>& metadata);

// HF LlamaForCausalLM config.json text for `cfg` (attention_type is written for llama_drope only).
std::string HfConfigJson(const model::LlamaConfig& cfg);
std::string GenerationConfigJson(const model::LlamaConfig& cfg);

struct ExportOptions {
  int shards = 1;             // 1: model.safetensors; n > 1: model-0000i-of-0000n.safetensors + index
  std::string tokenizer_dir;  // tokenizer.model, tokenizer_config.json, special_tokens_map.json are copied from it
  std::map<std::string, std::string> extra_files;  // name -> content, written before the manifest
};

// Writes a complete snapshot directory (created if needed; stale model*.safetensors files from an earlier export
// with another shard count are removed) and its SHA256SUMS. Tensors keep their order; shards split it into
// contiguous groups of about equal bytes.
absl::Status WriteHfDirectory(const std::string& dir, const model::LlamaConfig& cfg,
                              const std::vector<TensorBytes>& tensors, const ExportOptions& opts);

// SHA256SUMS: "<sha256 hex>  <file name>" for every regular file in `dir` except SHA256SUMS itself, sorted by name
// (the format `sha256sum -c` reads).
absl::Status WriteSha256Sums(const std::string& dir);
// Checks every line of <dir>/SHA256SUMS against the files, and that no regular file is missing from it.
// DataLoss naming the first mismatching file.
absl::Status VerifySha256Sums(const std::string& dir);

}  // namespace sinkscope::train
