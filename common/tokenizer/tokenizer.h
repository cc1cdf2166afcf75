// SentencePiece BPE tokenizer compatible with Llama-2's tokenizer.model (byte fallback, "▁" whitespace,
// dummy prefix, BOS=1 prepended, no EOS), implemented without libsentencepiece (it cannot share a process with
// libprotobuf; see docs/design-notes.md §2). The model file is parsed with the project's own copy of the
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
  // Parses the bytes of a tokenizer.model held in memory; `origin` names them in errors (e.g. a path or "<test>").
  // digest() is the SHA-256 of `serialized`.
  static absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadFromSerialized(std::string_view serialized,
                                                                             std::string_view origin);

  virtual ~Tokenizer() = default;
  // Same ids as sentencepiece's EncodeAsIds, with bos_id() prepended when add_bos.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos = true) const = 0;
  // Same text as sentencepiece's DecodeIds: control ids (BOS/EOS) vanish, "▁" becomes a space, the dummy-prefix
  // space of the first piece is dropped, runs of byte pieces are reassembled into UTF-8 (U+FFFD for invalid
  // bytes), <unk> becomes the model's unk surface (" ⁇ "). Ids outside [0, vocab_size()) also decode to the unk
  // surface; TryDecode reports them instead.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // IdToPiece of an id outside [0, vocab_size()) is "".
  virtual std::string IdToPiece(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual const std::string& digest() const = 0;  // SHA-256 hex of the model file

  // --- Additions (virtual with generic defaults, so other implementations such as test fakes keep compiling) ---
  // Same pieces as sentencepiece's EncodeAsPieces (no BOS). Default: IdToPiece over Encode(text, false).
  virtual std::vector<std::string> EncodeAsPieces(std::string_view text) const;
  // Like Decode, but an id outside [0, vocab_size()) is an OutOfRange error naming the id and its position.
  virtual absl::StatusOr<std::string> TryDecode(const std::vector<int32_t>& ids) const;
  // Id of a piece; unk_id() when the vocabulary has no such piece (sentencepiece's PieceToId). Default: linear scan.
  virtual int32_t PieceToId(std::string_view piece) const;
  // -1 when the model defines no padding id (Llama-2 and the shipped tiny tokenizer).
  virtual int32_t pad_id() const { return -1; }
  // True for ids that text never produces and Decode drops: BOS, EOS, PAD and other CONTROL pieces.
  virtual bool IsControl(int32_t id) const { return id == bos_id() || id == eos_id() || (id >= 0 && id == pad_id()); }
};

}  // namespace sinkscope::tokenizer
