// Bearer tokens (see auth.h).
#include "server/auth.h"

#include <yaml-cpp/yaml.h>

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/file.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {
namespace {

absl::Status Bad(const std::string& where, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
}

bool IsHexDigest(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(const std::string& yaml, const std::string& origin) {
  TokenTable t;
  try {
    const YAML::Node root = YAML::Load(yaml);
    const YAML::Node list = root.IsMap() ? root["tokens"] : YAML::Node();  // [] on a scalar would throw
    if (!root.IsMap() || !list || !list.IsSequence() || list.size() == 0)
      return Bad(origin, "expected a non-empty list under 'tokens' ({principal, role, token | sha256} entries)");
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node e = list[i];
      const std::string where = absl::StrCat(origin, ": tokens[", i, "]");
      if (!e.IsMap()) return Bad(where, "must be a mapping");
      for (const auto& kv : e) {
        const std::string key = kv.first.as<std::string>();
        if (key != "principal" && key != "role" && key != "token" && key != "sha256")
          return Bad(where, absl::StrCat("unknown key '", key, "' (principal, role, token, sha256)"));
      }
      Principal p;
      p.name = e["principal"] ? e["principal"].as<std::string>() : "";
      if (p.name.empty()) return Bad(where + ".principal", "required");
      const std::string role = e["role"] ? e["role"].as<std::string>() : "";
      if (role == "admin") {
        p.role = Role::kAdmin;
      } else if (role != "user") {
        return Bad(where + ".role", absl::StrCat("'", role, "' (expected user or admin)"));
      }
      if (e["token"].IsDefined() == e["sha256"].IsDefined()) return Bad(where, "give exactly one of token and sha256");
      std::string digest;
      if (e["token"]) {
        const std::string token = e["token"].as<std::string>();
        if (token.size() < 8) return Bad(where + ".token", "shorter than 8 characters");
        digest = util::Sha256Hex(token);
      } else {
        digest = absl::AsciiStrToLower(e["sha256"].as<std::string>());
        if (!IsHexDigest(digest)) return Bad(where + ".sha256", "not a 64-digit hex SHA-256");
      }
      if (!t.by_digest_.emplace(digest, p).second) return Bad(where, "the same token is listed twice");
    }
  } catch (const YAML::Exception& e) {
    return Bad(origin, absl::StrCat("YAML: ", e.what()));
  }
  return t;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = util::ReadFile(path);
  if (!text.ok())
    return absl::Status(text.status().code(), absl::StrCat("tokens file: ", text.status().message()));
  return Parse(*text, path);
}

absl::StatusOr<Principal> TokenTable::Authenticate(std::optional<std::string_view> authorization) const {
  if (empty()) return Principal{"anonymous", Role::kAdmin};
  if (!authorization || authorization->empty())
    return absl::UnauthenticatedError("this server requires a token: send 'authorization: Bearer <token>' "
                                      "(sinkscope --token, SINKSCOPE_TOKEN or --token-file)");
  std::string_view v = *authorization;
  constexpr std::string_view kBearer = "Bearer ";
  if (v.size() < kBearer.size() || !absl::EqualsIgnoreCase(absl::string_view(v.data(), kBearer.size()), "Bearer "))
    return absl::UnauthenticatedError("the authorization header must be 'Bearer <token>'");
  v.remove_prefix(kBearer.size());
  // Looked up by its digest: the table never holds or compares the secrets themselves.
  auto it = by_digest_.find(util::Sha256Hex(std::string(v)));
  if (it == by_digest_.end()) return absl::UnauthenticatedError("unknown or revoked token");
  return it->second;
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(const std::string& path) {
  auto store = std::make_unique<TokenStore>();
  store->path_ = path;
  RETURN_IF_ERROR(store->Reload());
  return store;
}

absl::Status TokenStore::Reload() {
  ASSIGN_OR_RETURN(TokenTable t, TokenTable::Load(path_));
  auto table = std::make_shared<const TokenTable>(std::move(t));
  std::lock_guard<std::mutex> l(mu_);
  table_ = std::move(table);
  return absl::OkStatus();
}

std::shared_ptr<const TokenTable> TokenStore::Get() const {
  std::lock_guard<std::mutex> l(mu_);
  return table_;
}

}  // namespace sinkscope::server
