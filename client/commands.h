// The sinkscope subcommands that talk to sinkscoped: one connection (Client: address, Bearer token, TLS), one
// helper for the unary RPCs (Unary + Print), and the commands that do more than one call or print more than one
// message. Exit status: exit_codes.h.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/exit_codes.h"
#include "client/render.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace sinkscope::client {

// Options shared by every subcommand (accepted before or after the subcommand).
struct Global {
  std::string server = "127.0.0.1:50051";  // host:port; batch takes a comma-separated list
  std::string format = "table";
  double timeout = 30;
  std::string token;       // Bearer token (--token, SINKSCOPE_TOKEN)
  std::string token_file;  // a file holding it (--token-file, SINKSCOPE_TOKEN_FILE)
  std::string tls_ca;      // PEM CA bundle: TLS to the server (--tls-ca, SINKSCOPE_TLS_CA); empty = plaintext
  bool quiet = false;
  bool wide = false;
  RenderOptions render() const;
};

// What every call carries: the token and, for TLS, the CA certificates.
struct Credentials {
  std::string token;
  std::string ca_pem;
  double timeout = 30;
};
// Reads --token-file and --tls-ca; InvalidArgument naming the flag when a file is unreadable or empty.
absl::StatusOr<Credentials> LoadCredentials(const Global& g);
// "a:1, b:2" -> {"a:1", "b:2"}; a "dns:///" prefix is dropped.
std::vector<std::string> SplitServers(const std::string& list);

// Prints a failed call's status on stderr ("server unavailable: ...", "not authenticated: ..."); returns its exit
// status (exit_codes.h).
int RpcError(const grpc::Status& st, const std::string& target = "");

class Client {
 public:
  // `target` is host:port. `tls_name` overrides the name TLS verifies (a replica reached by its resolved address).
  Client(const Credentials& cred, const std::string& target, const std::string& tls_name = "");
  // Adds the --timeout deadline (unless streaming, which has none) and the bearer token to a call.
  void Prepare(grpc::ClientContext* ctx, bool deadline = true) const;
  sinkscope::v1::Sinkscope::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  const std::string& target() const { return target_; }

 private:
  Credentials cred_;
  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sinkscope::v1::Sinkscope::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// One unary call on the Sinkscope service: RpcError's status when the call fails, else what `on_ok(response)`
// returns.   Unary(c, &v1::Sinkscope::Stub::ListModels, v1::ListModelsRequest(), Print(RenderModels, o))
template <typename Request, typename Response, typename OnOk>
int Unary(Client& c,
          grpc::Status (sinkscope::v1::Sinkscope::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
          const Request& req, OnOk on_ok) {
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  Response resp;
  const grpc::Status st = (c.stub().*method)(&ctx, req, &resp);
  if (!st.ok()) return RpcError(st, c.target());
  return on_ok(resp);
}

// Unary's `on_ok` for the Render* functions of render.h: print the response on stdout, exit 0.
template <typename Response>
auto Print(void (*render)(const Response&, const RenderOptions&, std::ostream&), RenderOptions o) {
  return [render, o](const Response& resp) {
    render(resp, o, std::cout);
    return 0;
  };
}

struct WatchOptions {
  RenderOptions render;
  bool progress = false;             // draw the progress line (stderr is a terminal, no --quiet)
  std::string save;                  // also write every event as a JSON line to this file
  std::string plot_dir;              // write the study's figures here when the job ends
  bool cancel_on_interrupt = false;  // Ctrl-C cancels the job (run); else it only stops watching (watch)
};

// Streams a job's events from seq `from`, rendering them; the job's exit status (0, 4 failed, 5 cancelled).
int Watch(Client& c, const WatchOptions& o, const std::string& id, uint64_t from);
// grpc.health.v1: prints the status; 0 when SERVING, else 3. `wait` > 0: waits up to that many seconds for
// SERVING with wait-for-ready and the Watch stream (no polling): the server may not be listening yet.
int Health(Client& c, double wait);
// Submits `spec`; prints its id when `detach`, else streams it like Watch.
int Submit(Client& c, const WatchOptions& o, const sinkscope::v1::JobSpec& spec, bool detach);
// Cancels a job; 0 when it is now CANCELLED, 1 (with a message) when it had already finished.
int Cancel(Client& c, const RenderOptions& o, const std::string& id);
// Lists jobs, newest first; `states` are JobState names without the JOB_STATE_ prefix, in any case.
int ListJobs(Client& c, const RenderOptions& o, int limit, const std::string& page_token,
             std::vector<std::string> states);

}  // namespace sinkscope::client
