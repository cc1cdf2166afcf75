#include "client/batch_servers.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

std::vector<std::string> SystemResolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::vector<std::string> out;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    std::string s;
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof buf);
      s = buf;
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, buf, sizeof buf);
      s = absl::StrCat("[", buf, "]");
    }
    if (!s.empty() && std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  }
  freeaddrinfo(res);
  return out;
}

absl::StatusOr<std::vector<Replica>> ResolveServers(const std::vector<std::string>& servers, const Resolver& resolve) {
  std::vector<Replica> out;
  std::set<std::string> seen;
  auto add = [&](Replica r) {
    if (seen.insert(r.target).second) out.push_back(std::move(r));
  };
  for (const auto& s : servers) {
    const size_t colon = s.rfind(':');
    if (colon == std::string::npos || colon + 1 == s.size() || s.back() == ']')
      return absl::InvalidArgumentError(absl::StrCat("--server: '", s, "' is not host:port"));
    std::string host = s.substr(0, colon);
    const std::string port = s.substr(colon + 1);
    const bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
    unsigned char buf[16];
    const std::string bare = bracketed ? host.substr(1, host.size() - 2) : host;
    if (inet_pton(AF_INET, bare.c_str(), buf) == 1 || inet_pton(AF_INET6, bare.c_str(), buf) == 1) {
      add({s, ""});
      continue;
    }
    const std::vector<std::string> addrs = resolve(host);
    if (addrs.empty()) return absl::InvalidArgumentError(absl::StrCat("--server: cannot resolve '", host, "'"));
    if (addrs.size() == 1) {
      add({s, ""});
      continue;
    }
    for (const auto& a : addrs) add({absl::StrCat(a, ":", port), host});
  }
  return out;
}

int ProbeReplicas(const Credentials& cred, const std::vector<Replica>& replicas, bool quiet,
                  std::vector<Replica>* live) {
  // Probe every replica once: unreachable ones are left out, refused credentials stop the batch.
  for (const auto& r : replicas) {
    Client c(cred, r.target, r.tls_name);
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ServerInfo info;
    const grpc::Status st = c.stub().GetServerInfo(&ctx, v1::GetServerInfoRequest(), &info);
    if (st.ok()) {
      live->push_back(r);
      if (!quiet) std::cerr << "batch: server " << r.target << " (sinkscoped " << info.version() << ")\n";
    } else if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
               st.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      return RpcError(st, r.target);
    } else {
      std::cerr << "sinkscope: batch: leaving out " << r.target << ": " << st.error_message() << "\n";
    }
  }
  if (live->empty()) {
    std::cerr << "sinkscope: batch: no server reachable\n";
    return kExitUnavailable;
  }
  return kExitOk;
}

}  // namespace sinkscope::client
