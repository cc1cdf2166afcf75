// Torch-free reader for Hugging Face safetensors checkpoints (single file or sharded with
// model.safetensors.index.json). Files are mmap'd; tensors are exposed as (dtype, shape, pointer into the mapping)
// so the engine can wrap them without copying (llama.cc: at::from_blob with a deleter that keeps the mapping
// alive).
//
// Format (https://github.com/huggingface/safetensors): u64 little-endian N, N bytes of UTF-8 JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section start (8 + N).
// Validation: file >= 8 bytes, 0 < N <= 100 MiB and 8 + N <= file size, header is a JSON object, every entry has
// a known dtype string, a shape of non-negative ints and begin <= end <= data size, numel × element size ==
// end − begin (overflow-checked), and no two tensors' byte ranges overlap. Every error message names the file
// (and the tensor when there is one). Corrupt or truncated files give DataLoss, unreadable ones NotFound /
// Internal; nothing crashes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope::model {

// Element types. F32/F16/BF16 are loadable; the other valid safetensors dtypes parse (so their byte spans are
// validated and extra tensors can be skipped) but are rejected when a weight needs them.
enum class StDtype { kF32, kF16, kBF16, kUnsupported };

struct StTensor {
  std::string name;
  std::string dtype_str;  // exactly as in the header, e.g. "BF16", "I64"
  StDtype dtype = StDtype::kUnsupported;
  size_t elem_size = 0;   // bytes per element of dtype_str
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;    // data_offsets, relative to the data section
  const uint8_t* data = nullptr;  // into the file mapping
  size_t nbytes() const { return static_cast<size_t>(end - begin); }
  int64_t numel() const;
};

// Parses and validates a safetensors header against a buffer of `file_size` bytes (`bytes` points at byte 0 of
// the file). `label` names the file in error messages. Exposed for tests and fuzzing.
absl::StatusOr<std::vector<StTensor>> ParseSafetensors(const uint8_t* bytes, size_t file_size, const std::string& label,
                                                       std::map<std::string, std::string>* metadata = nullptr);

// One mmap'd .safetensors file. The mapping is MAP_PRIVATE and writable copy-on-write, so an accidental in-place
// write to a wrapped tensor never reaches the file and never faults.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* bytes() const { return base_; }
  size_t size() const { return size_; }
  const std::vector<StTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensor* Find(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<StTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: <dir>/model.safetensors.index.json (sharded; its "weight_map" says which file holds each
// tensor) if present, else <dir>/model.safetensors.
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<std::shared_ptr<SafetensorsCheckpoint>> Open(const std::string& dir);

  // nullptr if absent. For sharded checkpoints only tensors listed in weight_map are visible.
  const StTensor* Find(const std::string& name) const;
  // The file holding `name` (nullptr if absent); keep the shared_ptr to keep the tensor's bytes mapped.
  std::shared_ptr<SafetensorsFile> FileOf(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }  // sorted by path
  bool sharded() const { return sharded_; }
  // SHA-256 over the bytes of all files, concatenated in sorted file-name order (for a single file this equals
  // `sha256sum model.safetensors`; for shards, `cat model-*.safetensors | sha256sum`).
  std::string Sha256Hex() const;

 private:
  bool sharded_ = false;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const StTensor*>> where_;  // name -> (file index, tensor)
};

}  // namespace sinkscope::model
