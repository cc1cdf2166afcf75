#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <grpcpp/support/status_code_enum.h>

#include "absl/strings/str_cat.h"

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

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
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
    try {
      m->impl_->exposer = std::make_unique<prometheus::Exposer>(listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", listen, ": ", e.what()));
    }
    m->impl_->exposer->RegisterCollectable(m->impl_->registry);
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

int Metrics::port() const {
  if (!impl_->exposer) return 0;
  auto ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace sinkscope::server
