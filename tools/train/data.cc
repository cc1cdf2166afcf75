#include "tools/train/data.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"

namespace sinkscope::train {
namespace {

constexpr char kMagic[8] = {'S', 'S', 'T', 'O', 'K', 'v', '1', '\n'};
constexpr size_t kHeader = 8 + 64 + 64 + 8;

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

std::vector<std::string> NonEmptyLines(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) out.push_back(std::move(line));
    pos = nl + 1;
  }
  return out;
}

std::vector<int32_t> EncodeCorpus(const tokenizer::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> stream;
  stream.reserve(text.size() / 3);
  bool doc_open = false;  // a document has tokens and no EOS yet
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) {
      if (doc_open) stream.push_back(tok.eos_id());  // blank line: document boundary
      doc_open = false;
    } else {
      std::vector<int32_t> ids = tok.Encode(line, /*add_bos=*/false);
      stream.insert(stream.end(), ids.begin(), ids.end());
      doc_open = true;
    }
    pos = nl + 1;
  }
  if (doc_open) stream.push_back(tok.eos_id());
  return stream;
}

absl::StatusOr<std::vector<int32_t>> LoadOrEncodeCorpus(const std::string& text_path,
                                                        const tokenizer::Tokenizer& tok,
                                                        const std::string& cache_path, bool* from_cache) {
  auto text = ReadFile(text_path);
  if (!text.ok()) return text.status();
  const std::string text_sha = util::Sha256Hex(*text);
  if (from_cache) *from_cache = false;
  if (auto cached = ReadFile(cache_path); cached.ok() && cached->size() >= kHeader &&
                                          std::memcmp(cached->data(), kMagic, 8) == 0 &&
                                          cached->compare(8, 64, text_sha) == 0 &&
                                          cached->compare(72, 64, tok.digest()) == 0) {
    const uint64_t n = GetU64(cached->data() + 136);
    if (cached->size() == kHeader + n * 4) {
      std::vector<int32_t> ids(n);
      const char* p = cached->data() + kHeader;
      for (uint64_t i = 0; i < n; ++i) {
        uint32_t u = 0;
        for (int b = 3; b >= 0; --b) u = (u << 8) | static_cast<unsigned char>(p[4 * i + b]);
        ids[i] = static_cast<int32_t>(u);
      }
      if (from_cache) *from_cache = true;
      return ids;
    }
  }
  std::vector<int32_t> ids = EncodeCorpus(tok, *text);
  std::string out(kMagic, 8);
  out += text_sha;
  out += tok.digest();
  PutU64(&out, ids.size());
  out.reserve(kHeader + ids.size() * 4);
  for (int32_t id : ids) {
    const uint32_t u = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((u >> (8 * b)) & 0xff));
  }
  if (absl::Status s = WriteFileAtomic(cache_path, out); !s.ok()) return s;
  return ids;
}

WindowSampler::WindowSampler(const std::vector<int32_t>* stream, int64_t seq_len, int32_t bos_id, uint64_t seed)
    : stream_(stream), seq_len_(seq_len), bos_(bos_id), rng_(seed) {}

std::vector<int64_t> WindowSampler::Next(int64_t batch) {
  const int64_t n = static_cast<int64_t>(stream_->size());
  const int64_t w = seq_len_ - 1;  // stream tokens per row
  const uint64_t starts = static_cast<uint64_t>(std::max<int64_t>(1, n - w + 1));
  std::vector<int64_t> out;
  out.reserve(batch * seq_len_);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t s = static_cast<int64_t>(rng_() % starts);
    out.push_back(bos_);
    for (int64_t j = 0; j < w; ++j) out.push_back((*stream_)[std::min(s + j, n - 1)]);
  }
  return out;
}

std::string WindowSampler::State() const {
  std::ostringstream ss;
  ss << rng_;
  return ss.str();
}

absl::Status WindowSampler::SetState(const std::string& state) {
  std::istringstream ss(state);
  std::mt19937_64 r;
  ss >> r;
  if (ss.fail()) return absl::InvalidArgumentError("sampler RNG state does not parse as a std::mt19937_64 state");
  rng_ = r;
  return absl::OkStatus();
}

std::vector<int64_t> EvalWindows(const std::vector<int32_t>& stream, int64_t seq_len, int32_t bos_id, int64_t count) {
  const int64_t n = static_cast<int64_t>(stream.size()), w = seq_len - 1;
  std::vector<int64_t> out;
  if (n < w || count <= 0) return out;
  const int64_t span = n - w;  // last valid start
  for (int64_t i = 0; i < count; ++i) {
    const int64_t s = count == 1 ? 0 : (span * i) / (count - 1);
    out.push_back(bos_id);
    for (int64_t j = 0; j < w; ++j) out.push_back(stream[s + j]);
  }
  return out;
}

double Unigram::LogProb(int32_t id) const {
  const double V = static_cast<double>(counts.size());
  const double c = (id >= 0 && id < static_cast<int32_t>(counts.size())) ? static_cast<double>(counts[id]) : 0.0;
  return std::log((c + 1.0) / (static_cast<double>(total) + V));
}

double Unigram::Perplexity(const std::vector<int32_t>& targets) const {
  if (targets.empty()) return std::nan("");
  double nll = 0;
  for (int32_t t : targets) nll -= LogProb(t);
  return std::exp(nll / static_cast<double>(targets.size()));
}

Unigram CountUnigram(const std::vector<int32_t>& stream, int32_t vocab_size) {
  Unigram u;
  u.counts.assign(vocab_size, 0);
  for (int32_t id : stream)
    if (id >= 0 && id < vocab_size) {
      ++u.counts[id];
      ++u.total;
    }
  return u;
}

}  // namespace sinkscope::train
