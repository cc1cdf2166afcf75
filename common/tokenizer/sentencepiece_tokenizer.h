// The concrete SentencePiece BPE tokenizer behind Tokenizer::Load, with the introspection the golden tests and
// tools need (piece types and scores, the normalised text, the normaliser settings). Torch-free, protobuf-free
// header: the model proto lives in tokenizer.cc only.
//
// Behaviour follows sentencepiece 0.1.97 (Debian bookworm; the same algorithm as 0.1.99 / 0.2.0):
//   normaliser  sentencepiece's Normalizer: user-defined symbols kept verbatim, otherwise the longest rule of the
//               model's precompiled_charsmap (a Darts-clone double-array trie; empty for "identity", present for
//               nmt_nfkc / nfkc / nmt_nfkc_cf / nfkc_cf / custom TSV rules), malformed UTF-8 bytes -> U+FFFD;
//               optional removal of leading / trailing / repeated spaces; "▁" (U+2581) for spaces; a dummy "▁"
//               prefix (or suffix with treat_whitespace_as_suffix).
//   BPE         sentencepiece's bpe::Model::Encode: characters (user-defined symbols whole and frozen), then
//               repeatedly the adjacent pair whose concatenation is a NORMAL / USER_DEFINED / UNUSED piece with the
//               highest score, leftmost on ties; UNUSED results re-split into the pair that formed them.
//   ids         unknown pieces -> <0xNN> byte pieces with byte_fallback, else unk_id (a run of unknown pieces
//               becomes one unk).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace sinkscope::tokenizer {

// SentencePiece's ModelProto.SentencePiece.Type values.
enum class PieceType : int {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Parses and validates a serialized ModelProto. Errors name `origin`: InvalidArgument for bytes that are not a
  // usable SentencePiece model (parse failure, missing trainer/normalizer spec, no pieces, duplicate or empty
  // pieces, no <unk>, incomplete byte pieces, broken charsmap), Unimplemented for model types other than BPE.
  static absl::StatusOr<std::shared_ptr<const SentencePieceTokenizer>> Create(std::string_view serialized,
                                                                              std::string_view origin);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> Encode(std::string_view text, bool add_bos = true) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string IdToPiece(int32_t id) const override;
  int32_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;
  int32_t unk_id() const override;
  const std::string& digest() const override;

  std::vector<std::string> EncodeAsPieces(std::string_view text) const override;
  absl::StatusOr<std::string> TryDecode(const std::vector<int32_t>& ids) const override;
  int32_t PieceToId(std::string_view piece) const override;
  int32_t pad_id() const override;
  bool IsControl(int32_t id) const override;

  // The text the BPE step segments, e.g. "▁Hello▁world" (sentencepiece's Normalizer::Normalize).
  std::string Normalize(std::string_view text) const;
  // Type / score of a piece; kUnknown / 0 for ids outside [0, vocab_size()).
  PieceType piece_type(int32_t id) const;
  float piece_score(int32_t id) const;

  const std::string& origin() const;           // path or label the model was loaded from
  const std::string& normalizer_name() const;  // NormalizerSpec.name, e.g. "identity", "nmt_nfkc"
  bool has_charsmap() const;                   // true when a precompiled normalisation trie is applied
  bool add_dummy_prefix() const;
  bool remove_extra_whitespaces() const;
  bool byte_fallback() const;

  struct Impl;

 private:
  explicit SentencePieceTokenizer(std::unique_ptr<const Impl> impl);
  absl::StatusOr<std::string> DecodeImpl(const std::vector<int32_t>& ids, bool strict) const;

  std::unique_ptr<const Impl> impl_;
};

}  // namespace sinkscope::tokenizer
