// Internals of the SentencePiece tokenizer (see normalizer.h).
#include "common/tokenizer/normalizer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sinkscope::tokenizer::internal {
namespace {

bool IsTrailByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }
bool IsValidCodepoint(char32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// UTF-8, with sentencepiece's exact rules (string_util::OneCharLen / DecodeUTF8 / IsValidDecodeUTF8).

// Length of the UTF-8 sequence announced by the lead byte (1 for stray continuation bytes).
size_t OneCharLen(const char* p) {
  static constexpr std::array<uint8_t, 16> kLen = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[static_cast<unsigned char>(*p) >> 4];
}

// Decodes the first character of a non-empty `s`: {code point, length}; {U+FFFD, 1} when malformed
// (overlong forms, surrogates and code points above U+10FFFF included).
std::pair<char32_t, size_t> DecodeUtf8(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const size_t len = s.size();
  if (b(0) < 0x80) return {b(0), 1};
  if (len >= 2 && (b(0) & 0xE0) == 0xC0) {
    const char32_t cp = ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    if (IsTrailByte(s[1]) && cp >= 0x80 && IsValidCodepoint(cp)) return {cp, 2};
  } else if (len >= 3 && (b(0) & 0xF0) == 0xE0) {
    const char32_t cp = ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    if (IsTrailByte(s[1]) && IsTrailByte(s[2]) && cp >= 0x800 && IsValidCodepoint(cp)) return {cp, 3};
  } else if (len >= 4 && (b(0) & 0xF8) == 0xF0) {
    const char32_t cp = ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    if (IsTrailByte(s[1]) && IsTrailByte(s[2]) && IsTrailByte(s[3]) && cp >= 0x10000 && IsValidCodepoint(cp)) {
      return {cp, 4};
    }
  }
  return {kUnicodeError, 1};
}

// True when the first character of `s` is well-formed (a literal U+FFFD counts as well-formed).
bool IsValidDecodeUtf8(std::string_view s, size_t* mblen) {
  const auto [cp, len] = DecodeUtf8(s);
  *mblen = len;
  return cp != kUnicodeError || len == 3;
}

// "<0xNN>" (upper-case hex) <-> byte.
std::string ByteToPiece(unsigned char b) { return absl::StrFormat("<0x%02X>", b); }

int PieceToByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else {
      return -1;  // sentencepiece only knows the upper-case spelling
    }
  }
  return value;
}

std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7F) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
absl::Status Normalizer::Init(const spm::NormalizerSpec& spec, bool treat_whitespace_as_suffix, const PrefixMatcher* matcher,
                  const std::string& origin, const char* what) {
  add_dummy_prefix_ = spec.add_dummy_prefix();
  remove_extra_whitespaces_ = spec.remove_extra_whitespaces();
  escape_whitespaces_ = spec.escape_whitespaces();
  treat_whitespace_as_suffix_ = treat_whitespace_as_suffix;
  matcher_ = matcher;
  const std::string& blob = spec.precompiled_charsmap();
  if (blob.empty()) return absl::OkStatus();
  // Layout: uint32 little-endian trie size | trie units | NUL-separated replacement strings.
  if (blob.size() <= 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", what, " '", spec.name(), "': precompiled_charsmap is too short (", blob.size(),
                     " bytes)"));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(blob.data());
  const uint32_t trie_size =
      uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
  if (trie_size > blob.size() - 4) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", what, " '", spec.name(),
                                                   "': precompiled_charsmap trie size ", trie_size,
                                                   " exceeds the blob (", blob.size(), " bytes)"));
  }
  pool_.assign(blob, 4 + trie_size, std::string::npos);
  trie_.Assign(std::string_view(blob).substr(4, trie_size));
  if (trie_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", what, " '", spec.name(), "': precompiled_charsmap has an empty trie"));
  }
  return absl::OkStatus();
}

std::string Normalizer::Normalize(std::string_view input) const {
  std::string out;
  if (input.empty()) return out;
  if (remove_extra_whitespaces_) {  // drop leading spaces (after normalisation)
    while (!input.empty()) {
      const auto [sp, consumed] = NormalizePrefix(input);
      if (sp != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return out;
  out.reserve(input.size() * 3);
  const std::string_view space = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
  if (!treat_whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);
  bool is_prev_space = remove_extra_whitespaces_;
  while (!input.empty()) {
    auto [sp, consumed] = NormalizePrefix(input);
    if (is_prev_space) {
      while (!sp.empty() && sp[0] == ' ') sp.remove_prefix(1);
    }
    if (!sp.empty()) {
      for (char c : sp) {
        if (escape_whitespaces_ && c == ' ') {
          out.append(kSpaceSymbol);
        } else {
          out.push_back(c);
        }
      }
      is_prev_space = sp.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!remove_extra_whitespaces_) is_prev_space = false;
  }
  if (remove_extra_whitespaces_) {  // drop trailing spaces
    while (out.size() >= space.size() && std::string_view(out).substr(out.size() - space.size()) == space) {
      out.resize(out.size() - space.size());
    }
  }
  if (treat_whitespace_as_suffix_ && add_dummy_prefix_) out.append(space);
  return out;
}

std::pair<std::string_view, size_t> Normalizer::NormalizePrefix(std::string_view input) const {
  if (matcher_ != nullptr) {
    bool found = false;
    const size_t len = matcher_->PrefixMatch(input, &found);
    if (found) return {input.substr(0, len), len};
  }
  if (!trie_.empty()) {
    std::array<DoubleArray::Match, kMaxTrieResults> matches;
    const size_t n = std::min(trie_.CommonPrefixSearch(input, matches.data(), matches.size()), matches.size());
    if (n > 0) {
      const DoubleArray::Match& m = matches[n - 1];  // the longest (matches come shortest first)
      std::string_view replacement;
      if (m.value < pool_.size()) {
        replacement = std::string_view(pool_).substr(m.value);
        replacement = replacement.substr(0, replacement.find('\0'));
      }
      return {replacement, m.length};
    }
  }
  size_t len = 0;
  if (!IsValidDecodeUtf8(input, &len)) return {kReplacementChar, 1};  // one malformed byte -> U+FFFD
  return {input.substr(0, len), len};
}

}  // namespace sinkscope::tokenizer::internal
