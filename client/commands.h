// The sinkscope subcommands that talk to sinkscoped: one connection (Client), one helper for the unary RPCs
// (Unary + Print), and the commands that do more than one call or print more than one message.
// Exit status of every command: 0 ok, 1 job failed or was cancelled (or health not SERVING), 2 usage or RPC error.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "client/job_flags.h"
#include "client/render.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sinkscope/v1/service.grpc.pb.h"

namespace sinkscope::client {

// Options shared by every subcommand.
struct Global {
  std::string server = "127.0.0.1:50051";
  std::string format = "table";
  double timeout = 30;
  std::string token;
  bool quiet = false;
};

// Prints a failed call's status on stderr ("server unavailable: " first when it could not connect); returns 2.
int RpcError(const grpc::Status& st);

class Client {
 public:
  explicit Client(const Global& g);
  // Adds the --timeout deadline (unless streaming, which has none) and the bearer token to a call.
  void Prepare(grpc::ClientContext* ctx, bool deadline = true) const;
  sinkscope::v1::Sinkscope::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }

 private:
  const Global& g_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<sinkscope::v1::Sinkscope::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// One unary call on the Sinkscope service: RpcError's 2 when the call fails, else what `on_ok(response)` returns.
//   Unary(c, &v1::Sinkscope::Stub::ListModels, v1::ListModelsRequest(), Print(RenderModels, f))
template <typename Request, typename Response, typename OnOk>
int Unary(Client& c,
          grpc::Status (sinkscope::v1::Sinkscope::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
          const Request& req, OnOk on_ok) {
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  Response resp;
  const grpc::Status st = (c.stub().*method)(&ctx, req, &resp);
  if (!st.ok()) return RpcError(st);
  return on_ok(resp);
}

// Unary's `on_ok` for the Render* functions of render.h: print the response on stdout, exit 0.
template <typename Response>
auto Print(void (*render)(const Response&, Format, std::ostream&), Format f) {
  return [render, f](const Response& resp) {
    render(resp, f, std::cout);
    return 0;
  };
}

// Streams a job's events from seq `from`, rendering them; 0 when the job succeeded, 1 when it did not.
int Watch(Client& c, const Global& g, Format f, const std::string& id, uint64_t from);
// Polls grpc.health.v1 every 200 ms for up to `wait` seconds; prints the last status; 0 once SERVING, else 1.
int Health(Client& c, double wait);
// Submits the job the flags describe; prints its id when `detach`, else streams it like Watch.
int Submit(Client& c, const Global& g, Format f, const JobFlags& flags, bool detach);
// Lists jobs, newest first; `states` are JobState names without the JOB_STATE_ prefix, in any case.
int ListJobs(Client& c, Format f, int limit, const std::string& page_token, std::vector<std::string> states);

}  // namespace sinkscope::client
