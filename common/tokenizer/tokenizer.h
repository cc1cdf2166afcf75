// SentencePiece BPE tokenizer compatible with Llama-2's tokenizer.model (byte fallback, "▁" whitespace,
// dummy prefix, BOS=1 prepended, no EOS), implemented without libsentencepiece (it cannot share a process with
// libprotobuf; see toolchain.md). The model file is parsed with the project's own copy of the
// sentencepiece_model.proto schema. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope::tokenizer {

class Tokenizer {
 public:
  // Reads a SentencePiece model file (BPE model type). Errors name the file and the problem.
  static absl::StatusOr<std::shared_ptr<const Tokenizer>> Load(const std::string& path);
  // Reads <dir>/tokenizer.model.
  static absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadFromDir(const std::string& model_dir);

  virtual ~Tokenizer() = default;
  // Same ids as sentencepiece's EncodeAsIds, with bos_id() prepended when add_bos.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos = true) const = 0;
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::string IdToPiece(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual const std::string& digest() const = 0;  // SHA-256 hex of the model file
};

}  // namespace sinkscope::tokenizer
