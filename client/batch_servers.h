// The servers of a batch: a list of host:port entries, each a replica, where a DNS name with several addresses is
// one replica per address; probed once before the batch starts.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/commands.h"

namespace sinkscope::client {

// A server replica: the address to dial and, when that is a resolved address, the name TLS verifies.
struct Replica {
  std::string target;
  std::string tls_name;
};
// host -> its addresses ("10.0.0.7", "[fd00::7]"), in resolver order.
using Resolver = std::function<std::vector<std::string>(const std::string& host)>;
std::vector<std::string> SystemResolve(const std::string& host);
// Expands "host:port" entries: an IP literal or a name with one address is one replica, a name with several
// addresses is one replica per address. InvalidArgument for "host" without a port or an unresolvable name.
absl::StatusOr<std::vector<Replica>> ResolveServers(const std::vector<std::string>& servers, const Resolver& resolve);
// Asks each replica for its ServerInfo (5 s): the reachable ones go to `live`, the others are left out with a
// warning. Exit status: 0; 3 when none answers or one refuses the credentials.
int ProbeReplicas(const Credentials& cred, const std::vector<Replica>& replicas, bool quiet,
                  std::vector<Replica>* live);

}  // namespace sinkscope::client
