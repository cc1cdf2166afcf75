// Internals of the SentencePiece tokenizer: UTF-8 rules, the double-array trie of a precompiled charsmap, the
// user-defined-symbol matcher and the normalizer — each reproducing sentencepiece's own behaviour. Not a public API:
// tokenizer.cc is its only user.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/tokenizer/sentencepiece_model.pb.h"

namespace sinkscope::tokenizer::internal {

namespace spm = ::sinkscope::tokenizer::spm;

inline constexpr std::string_view kSpaceSymbol = "\xe2\x96\x81";      // U+2581 LOWER ONE EIGHTH BLOCK
inline constexpr std::string_view kReplacementChar = "\xef\xbf\xbd";  // U+FFFD REPLACEMENT CHARACTER
inline constexpr char32_t kUnicodeError = 0xFFFD;
// sentencepiece's Normalizer looks at no more than this many trie matches per position.
inline constexpr size_t kMaxTrieResults = 32;


// ---------------------------------------------------------------------------------------------------------------
// UTF-8, with sentencepiece's exact rules (string_util::OneCharLen / DecodeUTF8 / IsValidDecodeUTF8).

// Length of the UTF-8 sequence announced by the lead byte (1 for stray continuation bytes).
size_t OneCharLen(const char* p);
// Decodes the first character of a non-empty `s`: {code point, length}; {U+FFFD, 1} when malformed
// (overlong forms, surrogates and code points above U+10FFFF included).
std::pair<char32_t, size_t> DecodeUtf8(std::string_view s);
// True when the first character of `s` is well-formed (a literal U+FFFD counts as well-formed).
bool IsValidDecodeUtf8(std::string_view s, size_t* mblen);
// "<0xNN>" (upper-case hex) <-> byte; PieceToByte returns -1 for anything else.
std::string ByteToPiece(unsigned char b);
int PieceToByte(std::string_view piece);
// `s` with quotes, backslashes and control bytes escaped, for error messages.
std::string Printable(std::string_view s);

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// ---------------------------------------------------------------------------------------------------------------
// Darts-clone double-array trie, read-only (the format of NormalizerSpec.precompiled_charsmap's trie part).
class DoubleArray {
 public:
  struct Match {
    uint32_t value;  // offset of the replacement in the charsmap's string pool
    size_t length;   // bytes of the key matched
  };

  void Assign(std::string_view blob) {
    units_.resize(blob.size() / 4);
    for (size_t i = 0; i < units_.size(); ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(blob.data() + 4 * i);
      units_[i] = uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
    }
  }
  bool empty() const { return units_.empty(); }

  // All keys that are prefixes of `key`, shortest first; stores at most `max` of them, returns how many exist.
  // Same traversal as Darts::DoubleArrayImpl::commonPrefixSearch, plus bounds checks for damaged blobs.
  size_t CommonPrefixSearch(std::string_view key, Match* out, size_t max) const {
    size_t found = 0;
    if (units_.empty()) return 0;
    uint32_t id = Offset(units_[0]);
    for (size_t i = 0; i < key.size(); ++i) {
      const auto c = static_cast<unsigned char>(key[i]);
      id ^= c;
      if (id >= units_.size()) return found;
      const uint32_t unit = units_[id];
      if (Label(unit) != c) return found;
      id ^= Offset(unit);
      if (HasLeaf(unit)) {
        if (id >= units_.size()) return found;
        if (found < max) out[found] = Match{Value(units_[id]), i + 1};
        ++found;
      }
    }
    return found;
  }

 private:
  static bool HasLeaf(uint32_t unit) { return ((unit >> 8) & 1) == 1; }
  static uint32_t Value(uint32_t unit) { return unit & ((1U << 31) - 1); }
  static uint32_t Label(uint32_t unit) { return unit & ((1U << 31) | 0xFF); }
  static uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & (1U << 9)) >> 6); }

  std::vector<uint32_t> units_;
};

// ---------------------------------------------------------------------------------------------------------------
// User-defined symbols: matched whole, longest first (sentencepiece's PrefixMatcher).
class PrefixMatcher {
 public:
  void Add(std::string symbol) {
    if (symbol.empty()) return;
    auto& bucket = by_first_byte_[static_cast<unsigned char>(symbol[0])];
    bucket.push_back(std::move(symbol));
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    any_ = true;
  }

  // Length of the longest symbol that prefixes `w` (*found = true), else of w's first UTF-8 character.
  size_t PrefixMatch(std::string_view w, bool* found) const {
    if (any_) {
      for (const std::string& s : by_first_byte_[static_cast<unsigned char>(w[0])]) {
        if (w.substr(0, s.size()) == s) {
          *found = true;
          return s.size();
        }
      }
    }
    *found = false;
    return std::min(w.size(), OneCharLen(w.data()));
  }

 private:
  std::array<std::vector<std::string>, 256> by_first_byte_;
  bool any_ = false;
};

// ---------------------------------------------------------------------------------------------------------------
// sentencepiece's normalizer::Normalizer (Normalize without the byte alignment, which nothing here needs).
class Normalizer {
 public:
  // Reads the spec's flags and precompiled charsmap; InvalidArgument naming `origin` and `what` for a damaged blob.
  absl::Status Init(const spm::NormalizerSpec& spec, bool treat_whitespace_as_suffix, const PrefixMatcher* matcher,
                    const std::string& origin, const char* what);
  bool has_charsmap() const { return !trie_.empty(); }
  std::string Normalize(std::string_view input) const;

 private:
  // Normalises the longest rule-covered prefix of a non-empty `input`: {replacement, bytes consumed}.
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view input) const;

  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  bool treat_whitespace_as_suffix_ = false;
  const PrefixMatcher* matcher_ = nullptr;
  DoubleArray trie_;
  std::string pool_;
};

}  // namespace sinkscope::tokenizer::internal
