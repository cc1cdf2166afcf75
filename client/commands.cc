#include "client/commands.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/interrupt.h"
#include "client/plot.h"
#include "client/progress.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

RenderOptions Global::render() const {
  RenderOptions o;
  o.format = format == "json" ? Format::kJson : format == "csv" ? Format::kCsv : Format::kTable;
  o.wide = wide;
  o.rewrite_partial = o.format == Format::kTable && isatty(STDOUT_FILENO);
  return o;
}

absl::StatusOr<Credentials> LoadCredentials(const Global& g) {
  Credentials c;
  c.timeout = g.timeout;
  c.token = g.token;
  if (c.token.empty() && !g.token_file.empty()) {
    absl::StatusOr<std::string> t = ReadWholeFile("--token-file", g.token_file);
    if (!t.ok()) return t.status();
    c.token = std::string(absl::StripAsciiWhitespace(*t));
    if (c.token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token-file: ", g.token_file, " is empty"));
  }
  if (!g.tls_ca.empty()) {
    absl::StatusOr<std::string> pem = ReadWholeFile("--tls-ca", g.tls_ca);
    if (!pem.ok()) return pem.status();
    if (!absl::StrContains(*pem, "-----BEGIN CERTIFICATE-----"))
      return absl::InvalidArgumentError(absl::StrCat("--tls-ca: ", g.tls_ca, " holds no PEM certificate"));
    c.ca_pem = *pem;
  }
  return c;
}

std::vector<std::string> SplitServers(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    s = absl::StripAsciiWhitespace(s);
    absl::ConsumePrefix(&s, "dns:///");
    out.emplace_back(s);
  }
  return out;
}

int RpcError(const grpc::Status& st, const std::string& target) {
  std::string what;
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      what = absl::StrCat("server unavailable", target.empty() ? "" : " at " + target, ": ");
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED: what = "no answer in time (--timeout): "; break;
    case grpc::StatusCode::UNAUTHENTICATED:
      what = "not authenticated (give --token, --token-file or SINKSCOPE_TOKEN): ";
      break;
    case grpc::StatusCode::PERMISSION_DENIED: what = "permission denied: "; break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: what = "server busy: "; break;
    default: break;
  }
  std::cerr << "sinkscope: " << what << st.error_message() << " (code " << st.error_code() << ")\n";
  if (absl::StrContains(st.error_message(), "truncate_to_context"))  // the server names the JobSpec field
    std::cerr << "sinkscope: run with --truncate-to-context (or --max-tokens N) to cut such prompts\n";
  return ExitCodeFor(st.error_code());
}

Client::Client(const Credentials& cred, const std::string& target, const std::string& tls_name)
    : cred_(cred), target_(target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);  // above gRPC's 4 MiB default, for large job lists and summaries
  // Reconnect within 2 s of a server coming (back) up (`health --wait` waits for it with wait-for-ready); gRPC's
  // default back-off grows to 2 minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (cred.ca_pem.empty()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = cred.ca_pem;
    creds = grpc::SslCredentials(ssl);
    if (!tls_name.empty()) args.SetSslTargetNameOverride(tls_name);
  }
  channel_ = grpc::CreateCustomChannel(target, creds, args);
  stub_ = v1::Sinkscope::NewStub(channel_);
  health_ = grpc::health::v1::Health::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext* ctx, bool deadline) const {
  if (deadline)
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(cred_.timeout * 1000)));
  if (!cred_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + cred_.token);
}

int Watch(Client& c, const WatchOptions& o, const std::string& id, uint64_t from) {
  std::ofstream save;
  if (!o.save.empty()) {
    save.open(o.save, from == 0 ? std::ios::trunc : std::ios::app);
    if (!save) {
      std::cerr << "sinkscope: --save: cannot write " << o.save << "\n";
      return kExitUsage;
    }
  }
  v1::StreamJobRequest req;
  req.set_job_id(id);
  req.set_from_seq(from);
  grpc::ClientContext ctx;
  c.Prepare(&ctx, /*deadline=*/false);  // a job runs as long as it needs; --timeout is for unary calls
  ProgressLine progress(o.progress, std::cerr, [&c, id]() {
    grpc::ClientContext g;
    c.Prepare(&g);
    v1::GetJobRequest r;
    r.set_job_id(id);
    v1::Job j;
    if (!c.stub().GetJob(&g, r, &j).ok() || j.state() != v1::JOB_STATE_QUEUED) return -1;
    return j.queue_position();
  });
  // Ctrl-C: `run` cancels the job and keeps streaming until its Finished event; a second Ctrl-C (or any Ctrl-C
  // under `watch`) stops watching and leaves the job as it is.
  std::mutex stop_mu;
  bool left = false;
  SetInterruptHandler([&](int n) {
    std::lock_guard<std::mutex> lock(stop_mu);
    if (o.cancel_on_interrupt && n == 1) {
      progress.Around(
          [&] { std::cerr << "sinkscope: cancelling job " << id << " (Ctrl-C again to leave it running)\n"; });
      grpc::ClientContext cc;
      c.Prepare(&cc);
      v1::CancelJobRequest creq;
      creq.set_job_id(id);
      v1::CancelJobResponse cresp;
      (void)c.stub().CancelJob(&cc, creq, &cresp);
      return;
    }
    left = true;
    ctx.TryCancel();
  });
  EventRenderer r(o.render, std::cout);
  std::vector<v1::JobEvent> events;
  auto reader = c.stub().StreamJob(&ctx, req);
  v1::JobEvent ev;
  v1::JobState final_state = v1::JOB_STATE_UNSPECIFIED;
  uint64_t next = from;
  while (reader->Read(&ev)) {
    next = ev.seq() + 1;
    if (save.is_open()) save << ToJson(ev) << "\n" << std::flush;
    if (!o.plot_dir.empty()) events.push_back(ev);
    if (ev.has_finished()) progress.Done();  // the line goes before the last output, never after it
    progress.Update(ev);
    const bool quiet_event = ev.has_progress() && o.render.format != Format::kJson;
    if (!quiet_event) progress.Around([&] { r.Render(ev); });
    if (ev.has_finished()) final_state = ev.finished().state();
  }
  progress.Done();
  r.Finish();
  grpc::Status st = reader->Finish();
  SetInterruptHandler({});
  {
    std::lock_guard<std::mutex> lock(stop_mu);
    if (left) {
      std::cerr << "sinkscope: stopped watching; job " << id << " continues (sinkscope watch " << id << " --from "
                << next << ")\n";
      return kExitCancelled;
    }
  }
  if (!st.ok()) {
    const int code = RpcError(st, c.target());
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE)
      std::cerr << "sinkscope: re-attach with: sinkscope watch " << id << " --from " << next << "\n";
    return code;
  }
  int code = final_state == v1::JOB_STATE_UNSPECIFIED ? kExitError : ExitCodeFor(final_state);
  if (!o.plot_dir.empty()) {
    const int pc = PlotEvents(events, o.plot_dir, std::cerr);
    if (code == kExitOk) code = pc;
  }
  return code;
}

namespace {

// What `health` prints and returns for a final answer: the status name (exit 0 when SERVING, else 3), the server's
// refusal for credentials and other errors (RpcError), "UNREACHABLE: ..." when nothing answered (3).
int HealthVerdict(Client& c, const grpc::Status& st, const grpc::health::v1::HealthCheckResponse* last,
                  const std::string& unreachable) {
  using grpc::health::v1::HealthCheckResponse;
  if (last != nullptr) {
    std::cout << HealthCheckResponse::ServingStatus_Name(last->status()) << "\n";
    return last->status() == HealthCheckResponse::SERVING ? kExitOk : kExitUnavailable;
  }
  if (st.error_code() != grpc::StatusCode::UNAVAILABLE && st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)
    return RpcError(st, c.target());
  std::cout << "UNREACHABLE: " << unreachable << "\n";
  return kExitUnavailable;
}

}  // namespace

int Health(Client& c, double wait) {
  using grpc::health::v1::HealthCheckResponse;
  grpc::health::v1::HealthCheckRequest req;
  if (wait <= 0) {  // one Check, failing fast
    grpc::ClientContext ctx;
    c.Prepare(&ctx);
    HealthCheckResponse resp;
    const grpc::Status st = c.health().Check(&ctx, req, &resp);
    return HealthVerdict(c, st, st.ok() ? &resp : nullptr, st.error_message());
  }
  // --wait: a Health.Watch stream with wait-for-ready under one deadline. gRPC holds the call until the server
  // accepts connections, the server pushes every status change, and the first SERVING ends the command. A stream
  // the server ends (a restart) is opened again, and again waits for the server, until the deadline.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(wait * 1000));
  std::optional<HealthCheckResponse> last;
  grpc::Status st;
  while (std::chrono::system_clock::now() < deadline) {
    grpc::ClientContext ctx;
    c.Prepare(&ctx, /*deadline=*/false);
    ctx.set_deadline(deadline);
    ctx.set_wait_for_ready(true);
    auto reader = c.health().Watch(&ctx, req);
    HealthCheckResponse resp;
    bool serving = false;
    while (!serving && reader->Read(&resp)) {
      last = resp;
      serving = resp.status() == HealthCheckResponse::SERVING;
    }
    if (serving) ctx.TryCancel();
    st = reader->Finish();
    if (serving) break;
    if (st.error_code() == grpc::StatusCode::UNIMPLEMENTED) {  // a server without Watch: one waiting Check
      grpc::ClientContext cc;
      c.Prepare(&cc, /*deadline=*/false);
      cc.set_deadline(deadline);
      cc.set_wait_for_ready(true);
      st = c.health().Check(&cc, req, &resp);
      if (st.ok()) last = resp;
      break;
    }
    if (!st.ok() && st.error_code() != grpc::StatusCode::UNAVAILABLE &&
        st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)
      return RpcError(st, c.target());
    // The stream broke (server going away): the next Watch waits for it again; a short pause so that a server
    // closing streams as fast as they open cannot spin this loop.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return HealthVerdict(c, st, last ? &*last : nullptr,
                       absl::StrCat("no server answered within ", wait, " s (", st.error_message(), ")"));
}

int Submit(Client& c, const WatchOptions& o, const v1::JobSpec& spec, bool detach) {
  v1::SubmitJobRequest req;
  *req.mutable_spec() = spec;
  return Unary(c, &v1::Sinkscope::Stub::SubmitJob, req, [&](const v1::SubmitJobResponse& resp) {
    if (!detach) return Watch(c, o, resp.job_id(), 0);
    if (o.render.format == Format::kJson)
      std::cout << ToJson(resp) << "\n";
    else
      std::cout << resp.job_id() << "\n";
    return 0;
  });
}

int Cancel(Client& c, const RenderOptions& o, const std::string& id) {
  v1::CancelJobRequest req;
  req.set_job_id(id);
  return Unary(c, &v1::Sinkscope::Stub::CancelJob, req, [&](const v1::CancelJobResponse& resp) {
    if (o.format == Format::kJson)
      std::cout << ToJson(resp) << "\n";
    else
      std::cout << StateName(resp.state()) << "\n";
    if (resp.state() == v1::JOB_STATE_CANCELLED) return 0;
    std::cerr << "sinkscope: job " << id << " had already finished (" << StateName(resp.state())
              << "); nothing was cancelled\n";
    return static_cast<int>(kExitError);
  });
}

int ListJobs(Client& c, const RenderOptions& o, int limit, const std::string& page_token,
             std::vector<std::string> states) {
  v1::ListJobsRequest req;
  req.set_limit(limit);
  req.set_page_token(page_token);
  for (auto& s : states) {
    for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    v1::JobState js;
    if (!v1::JobState_Parse("JOB_STATE_" + s, &js)) {
      std::cerr << "sinkscope: --state: unknown state '" << s
                << "' (expected queued, running, succeeded, failed, cancelled or interrupted)\n";
      return kExitUsage;
    }
    req.add_states(js);
  }
  return Unary(c, &v1::Sinkscope::Stub::ListJobs, req, Print(RenderJobs, o));
}

}  // namespace sinkscope::client
