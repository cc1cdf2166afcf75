#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <httplib.h>

#include <chrono>
#include <functional>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {

namespace {
std::string CodeName(int code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : absl::StrCat(code);
}
}  // namespace

// The /metrics endpoint: cpp-httplib's threaded server (a pool of workers, read/write timeouts, keep-alive), so an
// idle or slow client never holds up a scrape. GET /metrics -> text exposition; any other path -> 404.
// (prometheus-cpp's civetweb Exposer fails to construct in a process that also loads Debian's LibTorch.)
class HttpEndpoint {
 public:
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const std::string& addr,
                                                             std::function<std::string()> body) {
    const size_t colon = addr.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(addr.substr(colon + 1), &port) || port < 0 || port > 65535)
      return absl::InvalidArgumentError(absl::StrCat("metrics_listen: '", addr, "' is not host:port"));
    std::string host = addr.substr(0, colon);
    if (host.empty() || host == "localhost") host = "127.0.0.1";
    std::unique_ptr<HttpEndpoint> e(new HttpEndpoint());
    httplib::Server& http = e->http_;
    http.set_read_timeout(2, 0);
    http.set_write_timeout(2, 0);
    http.set_keep_alive_timeout(2);
    http.Get("/metrics", [body = std::move(body)](const httplib::Request&, httplib::Response& res) {
      res.set_content(body(), "text/plain; version=0.0.4; charset=utf-8");
    });
    // No SO_REUSEPORT (a second server on the port must fail): plain SO_REUSEADDR, as most servers do.
    http.set_socket_options([](int fd) {
      const int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    });
    e->port_ = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
    if (e->port_ <= 0)
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", addr, " (address in use or invalid)"));
    e->thread_ = std::thread([p = e.get()] { p->http_.listen_after_bind(); });
    // stop() only reaches a server that runs: wait for it, so that a quick destruction cannot hang the join.
    for (int i = 0; i < 2000 && !http.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return e;
  }
  ~HttpEndpoint() {
    http_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }

 private:
  HttpEndpoint() = default;
  httplib::Server http_;
  int port_ = 0;
  std::thread thread_;
};

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<HttpEndpoint> endpoint;
  prometheus::Family<prometheus::Counter>& rpcs = prometheus::BuildCounter()
                                                     .Name("sinkscope_rpcs_total")
                                                     .Help("gRPC calls handled, by method and status code")
                                                     .Register(*registry);
  prometheus::Family<prometheus::Counter>& jobs = prometheus::BuildCounter()
                                                      .Name("sinkscope_jobs_total")
                                                      .Help("Jobs by outcome: accepted, rejected_<code>, succeeded, failed, cancelled")
                                                      .Register(*registry);
  prometheus::Family<prometheus::Histogram>& run_seconds = prometheus::BuildHistogram()
                                                               .Name("sinkscope_job_run_seconds")
                                                               .Help("Wall time of a job on the worker")
                                                               .Register(*registry);
  prometheus::Family<prometheus::Histogram>& queue_seconds = prometheus::BuildHistogram()
                                                                 .Name("sinkscope_job_queue_seconds")
                                                                 .Help("Time a job waited in the queue")
                                                                 .Register(*registry);
  prometheus::Family<prometheus::Counter>& tokens = prometheus::BuildCounter()
                                                        .Name("sinkscope_tokens_total")
                                                        .Help("Prompt tokens processed by completed jobs, per model")
                                                        .Register(*registry);
  prometheus::Family<prometheus::Gauge>& gauges = prometheus::BuildGauge()
                                                      .Name("sinkscope_state")
                                                      .Help("queued/running jobs, ready/failed models")
                                                      .Register(*registry);
  const prometheus::Histogram::BucketBoundaries buckets = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800};
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}
Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& listen) {
  std::unique_ptr<Metrics> m(new Metrics());
  if (!listen.empty()) {
    Metrics* raw = m.get();
    ASSIGN_OR_RETURN(m->impl_->endpoint, HttpEndpoint::Start(listen, [raw] { return raw->Serialize(); }));
  }
  return m;
}

void Metrics::RpcHandled(const std::string& method, int grpc_code) {
  impl_->rpcs.Add({{"method", method}, {"code", CodeName(grpc_code)}}).Increment();
}
void Metrics::JobAccepted() { impl_->jobs.Add({{"outcome", "accepted"}}).Increment(); }
void Metrics::JobRejected(int grpc_code) {
  impl_->jobs.Add({{"outcome", "rejected_" + CodeName(grpc_code)}}).Increment();
}
void Metrics::JobFinished(const std::string& state, double run_seconds, double queue_seconds) {
  impl_->jobs.Add({{"outcome", state}}).Increment();
  impl_->run_seconds.Add({}, impl_->buckets).Observe(run_seconds);
  impl_->queue_seconds.Add({}, impl_->buckets).Observe(queue_seconds);
}
void Metrics::TokensProcessed(const std::string& model, int64_t tokens) {
  impl_->tokens.Add({{"model", model}}).Increment(static_cast<double>(tokens));
}
void Metrics::SetQueue(int queued, int running) {
  impl_->gauges.Add({{"what", "jobs_queued"}}).Set(queued);
  impl_->gauges.Add({{"what", "jobs_running"}}).Set(running);
}
void Metrics::SetModelsReady(int ready, int failed) {
  impl_->gauges.Add({{"what", "models_ready"}}).Set(ready);
  impl_->gauges.Add({{"what", "models_failed"}}).Set(failed);
}

std::string Metrics::Serialize() const {
  prometheus::TextSerializer s;
  return s.Serialize(impl_->registry->Collect());
}

int Metrics::port() const { return impl_->endpoint ? impl_->endpoint->port() : 0; }

}  // namespace sinkscope::server
