#include "client/commands.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <thread>

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

int RpcError(const grpc::Status& st) {
  std::cerr << "sinkscope: " << (st.error_code() == grpc::StatusCode::UNAVAILABLE ? "server unavailable: " : "")
            << st.error_message() << " (code " << st.error_code() << ")\n";
  return 2;
}

Client::Client(const Global& g) : g_(g) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);  // above gRPC's 4 MiB default, for large job lists and summaries
  channel_ = grpc::CreateCustomChannel(g.server, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Sinkscope::NewStub(channel_);
  health_ = grpc::health::v1::Health::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext* ctx, bool deadline) const {
  if (deadline)
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(g_.timeout * 1000)));
  if (!g_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + g_.token);
}

int Watch(Client& c, const Global& g, Format f, const std::string& id, uint64_t from) {
  // The progress line is redrawn with '\r', so only for a human watching a terminal.
  EventRenderer r(f, std::cout, f == Format::kTable && !g.quiet && isatty(2));
  v1::StreamJobRequest req;
  req.set_job_id(id);
  req.set_from_seq(from);
  grpc::ClientContext ctx;
  c.Prepare(&ctx, /*deadline=*/false);  // a job runs as long as it needs; --timeout is for unary calls
  auto reader = c.stub().StreamJob(&ctx, req);
  v1::JobEvent ev;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  while (reader->Read(&ev)) {
    r.Render(ev);
    if (ev.has_finished()) final_state = ev.finished().state();
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return RpcError(st);
  return final_state == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}

int Health(Client& c, double wait) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(wait * 1000));
  for (;;) {
    // Each probe has its own short deadline, independent of --timeout, so --wait alone bounds the polling.
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    auto st = c.health().Check(&ctx, req, &resp);
    const bool serving = st.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    if (serving || std::chrono::steady_clock::now() >= until) {
      std::cout << (st.ok() ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status())
                            : "UNREACHABLE: " + st.error_message())
                << "\n";
      return serving ? 0 : 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int Submit(Client& c, const Global& g, Format f, const JobFlags& flags, bool detach) {
  auto spec = BuildJobSpec(flags);
  if (!spec.ok()) {
    std::cerr << "sinkscope: " << spec.status().message() << "\n";
    return 2;
  }
  v1::SubmitJobRequest req;
  *req.mutable_spec() = *spec;
  return Unary(c, &v1::Sinkscope::Stub::SubmitJob, req, [&](const v1::SubmitJobResponse& resp) {
    if (!detach) return Watch(c, g, f, resp.job_id(), 0);
    if (f == Format::kJson) std::cout << ToJson(resp) << "\n";
    else std::cout << resp.job_id() << "\n";
    return 0;
  });
}

int ListJobs(Client& c, Format f, int limit, const std::string& page_token, std::vector<std::string> states) {
  v1::ListJobsRequest req;
  req.set_limit(limit);
  req.set_page_token(page_token);
  for (auto& s : states) {
    for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    v1::JobState js;
    if (!v1::JobState_Parse("JOB_STATE_" + s, &js)) {
      std::cerr << "sinkscope: --state: unknown state '" << s << "'\n";
      return 2;
    }
    req.add_states(js);
  }
  return Unary(c, &v1::Sinkscope::Stub::ListJobs, req, Print(RenderJobs, f));
}

}  // namespace sinkscope::client
