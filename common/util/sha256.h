// SHA-256 digests (OpenSSL EVP) for weights, tokenizer and dataset provenance. Torch-free.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope::util {

// Streaming hasher: Update() any number of times, then HexDigest() once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  std::string HexDigest();  // lowercase hex, 64 chars

 private:
  void* ctx_;
};

std::string Sha256Hex(std::string_view data);
// Hashes a file's bytes; NotFound / Internal errors name the path.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace sinkscope::util
