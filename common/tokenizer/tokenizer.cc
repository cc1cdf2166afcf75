// Tokenizer (tokenizer.h): the factories, which build the SentencePiece implementation, and the generic defaults of
// the interface's added members.
#include "common/tokenizer/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"
#include "common/util/file.h"

namespace sinkscope::tokenizer {
namespace {

// The model file's bytes; errors read "tokenizer model PATH: ...".
absl::StatusOr<std::string> ReadModelFile(const std::string& path) {
  absl::StatusOr<std::string> data = util::ReadFile(path);
  if (!data.ok()) return absl::Status(data.status().code(), absl::StrCat("tokenizer model ", data.status().message()));
  return data;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::LoadFromSerialized(std::string_view serialized,
                                                                               std::string_view origin) {
  auto tok = SentencePieceTokenizer::Create(serialized, origin);
  if (!tok.ok()) return tok.status();
  return std::shared_ptr<const Tokenizer>(*std::move(tok));
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::Load(const std::string& path) {
  auto data = ReadModelFile(path);
  if (!data.ok()) return data.status();
  return LoadFromSerialized(*data, path);
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::LoadFromDir(const std::string& model_dir) {
  if (model_dir.empty()) return Load("./tokenizer.model");
  return Load(model_dir + (model_dir.back() == '/' ? "" : "/") + "tokenizer.model");
}

std::vector<std::string> Tokenizer::EncodeAsPieces(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : Encode(text, /*add_bos=*/false)) out.push_back(IdToPiece(id));
  return out;
}

absl::StatusOr<std::string> Tokenizer::TryDecode(const std::vector<int32_t>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size()) {
      return absl::OutOfRangeError(
          absl::StrCat("id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab_size(), ")"));
    }
  }
  return Decode(ids);
}

int32_t Tokenizer::PieceToId(std::string_view piece) const {
  for (int32_t id = 0; id < vocab_size(); ++id) {
    if (IdToPiece(id) == piece) return id;
  }
  return unk_id();
}

}  // namespace sinkscope::tokenizer
