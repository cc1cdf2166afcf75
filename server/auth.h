// Who is calling, and what they may do: Bearer tokens from --tokens_file.
//
//   tokens:
//     - {principal: alice, role: user, token: "s3cret-alice"}          # the token itself, or
//     - {principal: ops, role: admin, sha256: "9f86d08…"}              # its SHA-256 (hex), so the file holds no secret
//
// Clients send gRPC metadata `authorization: Bearer <token>`. Users see, stream and cancel only their own jobs and do
// not see server paths; admins see everything. With no tokens file every caller is the admin "anonymous" (a local
// single-user server), which is why a non-loopback --listen without tokens is refused unless
// --insecure_allow_remote. Health and reflection never ask for a token (probes and tooling).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sinkscope::server {

enum class Role { kUser, kAdmin };

struct Principal {
  std::string name;
  Role role = Role::kUser;
  bool admin() const { return role == Role::kAdmin; }
};

class TokenTable {
 public:
  // Parses the YAML above; InvalidArgument naming the entry ("tokens[2].role: ...") for anything else: a missing
  // principal, an unknown role, neither or both of token/sha256, a malformed digest, a duplicate token.
  static absl::StatusOr<TokenTable> Parse(const std::string& yaml, const std::string& origin);
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  bool empty() const { return by_digest_.empty(); }
  size_t size() const { return by_digest_.size(); }

  // The caller of a request carrying `authorization` metadata (absent: nullopt). UNAUTHENTICATED with a message for
  // a missing or malformed header and for an unknown token. With an empty table: the admin "anonymous".
  absl::StatusOr<Principal> Authenticate(std::optional<std::string_view> authorization) const;

 private:
  std::map<std::string, Principal> by_digest_;  // SHA-256 hex of the token -> principal
};

// The tokens file as the server uses it: Reload (SIGHUP) replaces the table whole; a request in flight keeps the
// table it authenticated with. A file that no longer parses leaves the old table in place.
class TokenStore {
 public:
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(const std::string& path);
  absl::Status Reload();
  std::shared_ptr<const TokenTable> Get() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<const TokenTable> table_;
};

}  // namespace sinkscope::server
