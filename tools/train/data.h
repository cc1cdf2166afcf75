// Training data for sinkscope-train (torch-free): corpus text -> token stream (cached as a binary file), the
// BOS-first window sampler with a serialisable RNG, fixed held-out evaluation windows and a unigram baseline.
//
// Token stream: the corpus file has one paragraph per line and an empty line between documents (tools/corpus).
// Every non-empty line is encoded WITHOUT BOS (so it keeps SentencePiece's dummy-prefix "▁"), lines of a document
// are concatenated, and documents are separated by one EOS (id 2). A training sequence is BOS followed by a
// uniformly random window of seq_len-1 consecutive stream tokens: position 0 is always BOS, as in every Llama
// prompt the study measures.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"

namespace sinkscope::train {

// Encodes `text` (the whole corpus file) into the stream described above.
std::vector<int32_t> EncodeCorpus(const tokenizer::Tokenizer& tok, const std::string& text);

// Non-empty lines of a text, in order (the held-out "prompts", as the server's brown-heldout dataset reads them).
std::vector<std::string> NonEmptyLines(const std::string& text);

// Reads `text_path`, and returns its token stream, from `cache_path` when that file exists and was made from the
// same text bytes with the same tokenizer (both SHA-256s are in its header), else by encoding and (re)writing the
// cache. Format: "SSTOKv1\n" (8 bytes), text sha256 hex (64), tokenizer sha256 hex (64), u64 count (little
// endian), count × i32 (little endian).
absl::StatusOr<std::vector<int32_t>> LoadOrEncodeCorpus(const std::string& text_path,
                                                        const tokenizer::Tokenizer& tok,
                                                        const std::string& cache_path, bool* from_cache = nullptr);

// Deterministic BOS-first window sampler over a token stream. The RNG is std::mt19937_64 (its output sequence is
// fixed by the C++ standard) and the window start is rng() % (n - seq_len + 2), so a seed gives the same batches on
// every platform. State() / SetState() round-trip the RNG exactly (checkpoints).
class WindowSampler {
 public:
  WindowSampler(const std::vector<int32_t>* stream, int64_t seq_len, int32_t bos_id, uint64_t seed);
  // batch × seq_len ids, row-major; each row = BOS + stream[s, s + seq_len - 1).
  std::vector<int64_t> Next(int64_t batch);
  std::string State() const;
  absl::Status SetState(const std::string& state);
  int64_t seq_len() const { return seq_len_; }

 private:
  const std::vector<int32_t>* stream_;
  int64_t seq_len_;
  int32_t bos_;
  std::mt19937_64 rng_;
};

// `count` evaluation rows (BOS + seq_len-1 stream tokens) at evenly spaced, non-random starts over the stream
// (row-major, count × seq_len). Fewer rows when the stream is short; the count is rows.size() / seq_len.
std::vector<int64_t> EvalWindows(const std::vector<int32_t>& stream, int64_t seq_len, int32_t bos_id, int64_t count);

// Add-one smoothed unigram model over the token stream's ids (EOS separators included, BOS never occurs in the
// stream): p(i) = (count_i + 1) / (N + V).
struct Unigram {
  std::vector<int64_t> counts;  // size V
  int64_t total = 0;            // N
  double LogProb(int32_t id) const;
  // Perplexity over the given targets: exp(mean over targets of -log p(target)).
  double Perplexity(const std::vector<int32_t>& targets) const;
};
Unigram CountUnigram(const std::vector<int32_t>& stream, int32_t vocab_size);

using util::ReadFile;
using util::WriteFileAtomic;

}  // namespace sinkscope::train
