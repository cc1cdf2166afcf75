// SentencePiece BPE tokenizer (see sentencepiece_tokenizer.h for the behaviour it reproduces).
#include "common/tokenizer/sentencepiece_tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/normalizer.h"
#include "common/tokenizer/sentencepiece_model.pb.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace sinkscope::tokenizer {
namespace {

namespace spm = ::sinkscope::tokenizer::spm;
using namespace internal;  // NOLINT: the tokenizer's own internals (normalizer.h)

const char* ModelTypeName(int t) {
  switch (t) {
    case spm::TrainerSpec::UNIGRAM: return "UNIGRAM";
    case spm::TrainerSpec::BPE: return "BPE";
    case spm::TrainerSpec::WORD: return "WORD";
    case spm::TrainerSpec::CHAR: return "CHAR";
    default: return "unknown";
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
struct SentencePieceTokenizer::Impl {
  std::string origin;
  std::string digest;
  std::string normalizer_name;

  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<PieceType> types;
  PieceMap normal;    // NORMAL, USER_DEFINED, UNUSED: what BPE may produce
  PieceMap reserved;  // UNKNOWN, CONTROL, BYTE
  std::array<int32_t, 256> byte_ids{};
  PrefixMatcher user_defined;
  Normalizer normalizer;
  Normalizer denormalizer;
  bool has_denormalizer = false;

  int32_t unk = -1, bos = -1, eos = -1, pad = -1;
  bool byte_fallback = false;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool treat_whitespace_as_suffix = false;
  std::string unk_surface;

  int32_t PieceToId(std::string_view piece) const {
    if (auto it = reserved.find(piece); it != reserved.end()) return it->second;
    if (auto it = normal.find(piece); it != normal.end()) return it->second;
    return unk;
  }
  PieceType Type(int32_t id) const { return types[static_cast<size_t>(id)]; }

  // bpe::Model::Encode on normalised text: (piece, id) in order; id is unk for pieces outside the vocabulary.
  std::vector<std::pair<std::string_view, int32_t>> Segment(std::string_view normalized) const;
  // SentencePieceProcessor's conversion of segments to ids (byte fallback, unk runs merged).
  void AppendIds(const std::vector<std::pair<std::string_view, int32_t>>& segments, std::vector<int32_t>* ids) const;
};

std::vector<std::pair<std::string_view, int32_t>> SentencePieceTokenizer::Impl::Segment(
    std::string_view normalized) const {
  struct Symbol {
    int prev;
    int next;
    bool freeze;  // a user-defined symbol: never merged
    std::string_view piece;
  };
  struct Candidate {
    float score;
    int left;
    int right;
    size_t size;  // bytes of the merged piece; detects candidates made stale by other merges
  };
  struct Lower {  // priority: higher score first, then smaller left index
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  std::vector<Symbol> symbols;
  symbols.reserve(normalized.size());
  for (std::string_view rest = normalized; !rest.empty();) {
    Symbol s{};
    const size_t len = user_defined.PrefixMatch(rest, &s.freeze);
    s.piece = rest.substr(0, len);
    const int index = static_cast<int>(symbols.size());
    s.prev = index - 1;
    rest.remove_prefix(len);
    s.next = rest.empty() ? -1 : index + 1;
    symbols.push_back(s);
  }
  if (symbols.empty()) return {};

  std::priority_queue<Candidate, std::vector<Candidate>, Lower> agenda;
  // For UNUSED merge results: the two pieces they were formed from (last formation wins, as upstream).
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> unused_parts;

  auto maybe_add = [&](int left, int right) {
    if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view merged(symbols[left].piece.data(), symbols[left].piece.size() + symbols[right].piece.size());
    const auto it = normal.find(merged);
    if (it == normal.end()) return;
    agenda.push(Candidate{scores[it->second], left, right, merged.size()});
    if (types[it->second] == PieceType::kUnused) unused_parts[merged] = {symbols[left].piece, symbols[right].piece};
  };

  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!agenda.empty()) {
    const Candidate top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[top.left];
    Symbol& r = symbols[top.right];
    if (l.piece.empty() || r.piece.empty() || l.piece.size() + r.piece.size() != top.size) continue;  // stale
    l.piece = std::string_view(l.piece.data(), l.piece.size() + r.piece.size());
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = top.left;
    r.piece = std::string_view();
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }

  std::vector<std::pair<std::string_view, int32_t>> out;
  std::function<void(std::string_view)> emit = [&](std::string_view w) {
    const int32_t id = PieceToId(w);
    if (id >= 0 && types[id] == PieceType::kUnused) {
      if (auto it = unused_parts.find(w); it != unused_parts.end()) {
        emit(it->second.first);
        emit(it->second.second);
        return;
      }
    }
    out.emplace_back(w, id);
  };
  for (int i = 0; i != -1; i = symbols[i].next) emit(symbols[i].piece);
  return out;
}

void SentencePieceTokenizer::Impl::AppendIds(const std::vector<std::pair<std::string_view, int32_t>>& segments,
                                             std::vector<int32_t>* ids) const {
  bool prev_unknown = false;
  for (const auto& [w, id] : segments) {
    const PieceType type = Type(id);
    const bool unknown = type == PieceType::kUnknown;
    if (type == PieceType::kControl) {
      ids->push_back(id);
    } else if (unknown && byte_fallback) {
      for (char c : w) ids->push_back(byte_ids[static_cast<unsigned char>(c)]);
    } else if (!(unknown && prev_unknown)) {  // a run of unknown pieces is one <unk>
      ids->push_back(id);
    }
    prev_unknown = unknown;
  }
}

// ---------------------------------------------------------------------------------------------------------------
absl::StatusOr<std::shared_ptr<const SentencePieceTokenizer>> SentencePieceTokenizer::Create(
    std::string_view serialized, std::string_view origin_view) {
  const std::string origin(origin_view);
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", parts...));
  };
  if (serialized.empty()) return bad("empty file, not a SentencePiece model");
  if (serialized.size() > static_cast<size_t>(INT_MAX)) return bad("file too large (", serialized.size(), " bytes)");

  spm::ModelProto proto;
  if (!proto.ParseFromArray(serialized.data(), static_cast<int>(serialized.size()))) {
    return bad("not a SentencePiece model (protobuf ModelProto parse failed: garbage or truncated file, ",
               serialized.size(), " bytes)");
  }
  if (proto.pieces_size() == 0) return bad("not a SentencePiece model or truncated: it has no pieces");
  if (!proto.has_trainer_spec()) return bad("not a SentencePiece model or truncated: no trainer_spec");
  if (!proto.has_normalizer_spec()) return bad("not a SentencePiece model or truncated: no normalizer_spec");
  const spm::TrainerSpec& trainer = proto.trainer_spec();
  if (trainer.model_type() != spm::TrainerSpec::BPE) {
    return absl::UnimplementedError(absl::StrCat(origin, ": model_type ", ModelTypeName(trainer.model_type()),
                                                 " is not supported; only BPE models (like Llama-2's) are"));
  }

  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  impl->digest = util::Sha256Hex(serialized);
  impl->normalizer_name = proto.normalizer_spec().name();
  impl->byte_fallback = trainer.byte_fallback();
  impl->add_dummy_prefix = proto.normalizer_spec().add_dummy_prefix();
  impl->remove_extra_whitespaces = proto.normalizer_spec().remove_extra_whitespaces();
  impl->treat_whitespace_as_suffix = trainer.treat_whitespace_as_suffix();
  impl->unk_surface = trainer.unk_surface();
  impl->byte_ids.fill(-1);

  const int n = proto.pieces_size();
  impl->pieces.reserve(n);
  impl->scores.reserve(n);
  impl->types.reserve(n);
  for (int i = 0; i < n; ++i) {
    const auto& p = proto.pieces(i);
    const std::string& piece = p.piece();
    if (piece.empty()) return bad("piece ", i, " is empty");
    const auto type = static_cast<PieceType>(p.type());
    const bool normal = type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
    PieceMap& map = normal ? impl->normal : impl->reserved;
    if (auto [it, inserted] = map.emplace(piece, i); !inserted) {
      return bad("piece \"", Printable(piece), "\" (id ", i, ") is already defined as id ", it->second);
    }
    switch (type) {
      case PieceType::kUserDefined:
        impl->user_defined.Add(piece);
        break;
      case PieceType::kUnknown:
        if (impl->unk >= 0) return bad("a second unknown piece \"", Printable(piece), "\" (id ", i, ")");
        impl->unk = i;
        break;
      case PieceType::kByte: {
        if (!trainer.byte_fallback()) {
          return bad("byte piece \"", Printable(piece), "\" (id ", i, ") although byte_fallback is false");
        }
        const int b = PieceToByte(piece);
        if (b < 0) return bad("byte piece \"", Printable(piece), "\" (id ", i, ") is not of the form <0xNN>");
        impl->byte_ids[b] = i;
        break;
      }
      default:
        break;
    }
    impl->pieces.push_back(piece);
    impl->scores.push_back(p.score());
    impl->types.push_back(type);
  }
  if (impl->unk < 0) return bad("no unknown (<unk>) piece");
  if (impl->byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (impl->byte_ids[b] < 0) return bad("byte_fallback is true but byte piece ", ByteToPiece(b), " is missing");
    }
  }
  // Like SentencePieceProcessor::bos_id() etc.: the id of the named piece when it is a CONTROL piece, else -1.
  auto control_id = [&](const std::string& piece) -> int32_t {
    const int32_t id = impl->PieceToId(piece);
    return impl->types[id] == PieceType::kControl ? id : -1;
  };
  impl->bos = control_id(trainer.bos_piece());
  impl->eos = control_id(trainer.eos_piece());
  impl->pad = control_id(trainer.pad_piece());

  if (auto st = impl->normalizer.Init(proto.normalizer_spec(), trainer.treat_whitespace_as_suffix(),
                                      &impl->user_defined, origin, "normalizer");
      !st.ok()) {
    return st;
  }
  if (proto.has_denormalizer_spec() && !proto.denormalizer_spec().precompiled_charsmap().empty()) {
    if (auto st = impl->denormalizer.Init(proto.denormalizer_spec(), false, nullptr, origin, "denormalizer");
        !st.ok()) {
      return st;
    }
    impl->has_denormalizer = true;
  }
  return std::shared_ptr<const SentencePieceTokenizer>(new SentencePieceTokenizer(std::move(impl)));
}

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<const Impl> impl) : impl_(std::move(impl)) {}
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::string SentencePieceTokenizer::Normalize(std::string_view text) const {
  return impl_->normalizer.Normalize(text);
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && impl_->bos >= 0) ids.push_back(impl_->bos);
  const std::string normalized = impl_->normalizer.Normalize(text);
  if (normalized.empty()) return ids;
  ids.reserve(ids.size() + normalized.size() / 2 + 1);
  impl_->AppendIds(impl_->Segment(normalized), &ids);
  return ids;
}

std::vector<std::string> SentencePieceTokenizer::EncodeAsPieces(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : Encode(text, /*add_bos=*/false)) out.push_back(impl_->pieces[id]);
  return out;
}

absl::StatusOr<std::string> SentencePieceTokenizer::DecodeImpl(const std::vector<int32_t>& ids, bool strict) const {
  const Impl& m = *impl_;
  std::string text;
  std::string bytes;  // pending run of byte pieces

  auto flush_bytes = [&]() {
    size_t offset = 0;
    while (offset < bytes.size()) {
      size_t len = 0;
      if (IsValidDecodeUtf8(std::string_view(bytes).substr(offset), &len)) {
        text.append(bytes, offset, len);
      } else {
        text.append(kReplacementChar);
      }
      offset += len;
    }
    bytes.clear();
  };

  bool is_bos_ws = true;      // the next piece may carry the dummy-prefix space to drop
  bool bos_ws_seen = false;   // a piece already gave up its leading "▁"
  const bool strips_prefix = m.add_dummy_prefix || m.remove_extra_whitespaces;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= static_cast<int32_t>(m.pieces.size())) {
      if (strict) {
        return absl::OutOfRangeError(absl::StrCat(m.origin, ": id ", id, " at position ", i,
                                                  " is outside the vocabulary [0, ", m.pieces.size(), ")"));
      }
      flush_bytes();
      if (bos_ws_seen || !text.empty()) is_bos_ws = false;
      bos_ws_seen = false;
      text.append(m.unk_surface);
      continue;
    }
    const PieceType type = m.Type(id);
    if (type == PieceType::kByte) {
      bytes.push_back(static_cast<char>(PieceToByte(m.pieces[id])));
      continue;
    }
    flush_bytes();
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    bos_ws_seen = false;
    if (type == PieceType::kControl) continue;
    if (type == PieceType::kUnknown) {
      text.append(m.unk_surface);
      continue;
    }
    std::string_view piece = m.pieces[id];
    if (is_bos_ws && strips_prefix && piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
      piece.remove_prefix(kSpaceSymbol.size());
      // With remove_extra_whitespaces every leading "▁" goes until some text appears; otherwise only one.
      bos_ws_seen = !m.remove_extra_whitespaces;
    }
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.substr(pos, kSpaceSymbol.size()) == kSpaceSymbol) {
        text.push_back(' ');
        pos += kSpaceSymbol.size();
      } else {
        text.push_back(piece[pos++]);
      }
    }
  }
  flush_bytes();
  if (m.has_denormalizer) text = m.denormalizer.Normalize(text);
  return text;
}

std::string SentencePieceTokenizer::Decode(const std::vector<int32_t>& ids) const {
  return *DecodeImpl(ids, /*strict=*/false);
}
absl::StatusOr<std::string> SentencePieceTokenizer::TryDecode(const std::vector<int32_t>& ids) const {
  return DecodeImpl(ids, /*strict=*/true);
}

std::string SentencePieceTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return impl_->pieces[id];
}
int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const { return impl_->PieceToId(piece); }
int32_t SentencePieceTokenizer::vocab_size() const { return static_cast<int32_t>(impl_->pieces.size()); }
int32_t SentencePieceTokenizer::bos_id() const { return impl_->bos; }
int32_t SentencePieceTokenizer::eos_id() const { return impl_->eos; }
int32_t SentencePieceTokenizer::unk_id() const { return impl_->unk; }
int32_t SentencePieceTokenizer::pad_id() const { return impl_->pad; }
bool SentencePieceTokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->Type(id) == PieceType::kControl;
}
const std::string& SentencePieceTokenizer::digest() const { return impl_->digest; }
PieceType SentencePieceTokenizer::piece_type(int32_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->Type(id) : PieceType::kUnknown;
}
float SentencePieceTokenizer::piece_score(int32_t id) const {
  return id >= 0 && id < vocab_size() ? impl_->scores[id] : 0.0f;
}
const std::string& SentencePieceTokenizer::origin() const { return impl_->origin; }
const std::string& SentencePieceTokenizer::normalizer_name() const { return impl_->normalizer_name; }
bool SentencePieceTokenizer::has_charsmap() const { return impl_->normalizer.has_charsmap(); }
bool SentencePieceTokenizer::add_dummy_prefix() const { return impl_->add_dummy_prefix; }
bool SentencePieceTokenizer::remove_extra_whitespaces() const { return impl_->remove_extra_whitespaces; }
bool SentencePieceTokenizer::byte_fallback() const { return impl_->byte_fallback; }

}  // namespace sinkscope::tokenizer
