#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
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

// A minimal HTTP/1.1 responder for Prometheus scrapes: GET /metrics -> text exposition, anything else -> 404,
// one connection at a time, Connection: close. prometheus-cpp's civetweb Exposer cannot be used: in a process that
// also loads Debian's LibTorch, CivetServer construction fails after a successful bind (measured; see
// docs/operations.md), so the endpoint is served here from plain sockets.
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
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1)
      return absl::InvalidArgumentError(absl::StrCat("metrics_listen: '", host, "' is not an IPv4 address"));
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 16) != 0) {
      const std::string err = strerror(errno);
      if (fd >= 0) close(fd);
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", addr, ": ", err));
    }
    socklen_t len = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    std::unique_ptr<HttpEndpoint> e(new HttpEndpoint());
    e->fd_ = fd;
    e->port_ = ntohs(a.sin_port);
    e->body_ = std::move(body);
    e->thread_ = std::thread([p = e.get()] { p->Loop(); });
    return e;
  }
  ~HttpEndpoint() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    close(fd_);
  }
  int port() const { return port_; }

 private:
  HttpEndpoint() = default;
  void Loop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      timeval tv{2, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      std::string req;
      char buf[2048];
      while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
        const ssize_t n = recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        req.append(buf, static_cast<size_t>(n));
      }
      std::string status = "404 Not Found", type = "text/plain", body = "not found\n";
      if (req.rfind("GET /metrics ", 0) == 0 || req.rfind("GET /metrics?", 0) == 0) {
        status = "200 OK";
        type = "text/plain; version=0.0.4; charset=utf-8";
        body = body_();
      } else if (req.rfind("GET ", 0) != 0) {
        status = "405 Method Not Allowed";
        body = "only GET /metrics\n";
      }
      const std::string resp = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                            "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
      size_t off = 0;
      while (off < resp.size()) {
        const ssize_t n = send(c, resp.data() + off, resp.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      close(c);
    }
  }
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::function<std::string()> body_;
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
