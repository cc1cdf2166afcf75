// sinkscope.v1 protobuf <-> engine types: the only place in the server where the two meet.
//   convert_spec.cc     requests: v1::JobSpec <-> job::JobSpec, plus the fields only the server keeps
//   convert_results.cc  results, job events, model and dataset descriptions
//   convert_enums.h     every proto enum <-> engine enum pair, written once, read both ways
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "common/job/datasets.h"
#include "common/job/job_spec.h"
#include "common/job/model_handle.h"
#include "sinkscope/v1/jobs.pb.h"
#include "sinkscope/v1/models.pb.h"

namespace sinkscope::model {
class LlamaModel;
}
namespace sinkscope::tokenizer {
class Tokenizer;
}

namespace sinkscope::server {

// ----- requests -----

// The fields of a v1::JobSpec that the engine never sees: the scheduler's and the job's label.
struct ServerFields {
  int32_t priority = 0;         // higher runs first
  double deadline_seconds = 0;  // from submission; 0 = none
  std::string label;
};

// Structure only: InvalidArgument naming the field for an unset oneof or required message, an empty list or name
// the engine could not tell from "unset", or an unknown enum value. An unset proto field (proto3 zero, absent
// optional) leaves the engine's default (common/job/job_spec.h). Every range rule is the engine's: job::BuildPlan.
absl::StatusOr<job::JobSpec> FromProto(const sinkscope::v1::JobSpec& p);
// priority in [-10, 10], deadline_seconds finite and >= 0; InvalidArgument naming the field otherwise.
absl::StatusOr<ServerFields> ServerFieldsFromProto(const sinkscope::v1::JobSpec& p);
// The spec as stored with a job (Job.spec): every engine value explicit, defaults included, plus `server`.
sinkscope::v1::JobSpec ToProto(const job::JobSpec& s, const ServerFields& server);

// ----- results and descriptions -----

void ToProto(const job::Stat& s, sinkscope::v1::Stat* p);
void ToProto(const job::LayerResult& r, sinkscope::v1::LayerResult* p);
void ToProto(const job::PerplexityResult& r, sinkscope::v1::PerplexityResult* p);
void ToProto(const job::Summary& s, sinkscope::v1::Summary* p);
void ToProto(const job::PromptResult& r, sinkscope::v1::PromptResult* p);
void ToProto(const job::Progress& s, sinkscope::v1::Progress* p);
void ToProto(const job::Started& s, sinkscope::v1::Started* p);
void ToProto(const job::Dataset& d, sinkscope::v1::DatasetInfo* p);
// What the engine knows of a loaded model: architecture, geometry, dtype, device, digests, hook point templates.
// Name, description, path and state are the registry's. `tok` may be null (no tokenizer: token-id jobs only).
void ToProto(const model::LlamaModel& m, const tokenizer::Tokenizer* tok, sinkscope::v1::ModelInfo* p);

// The limits every job obeys (the engine's) and the server's own, as ServerInfo reports them.
void ToProto(const job::RunLimits& limits, int32_t max_queued_jobs, int32_t max_request_bytes,
             sinkscope::v1::ServerLimits* p);

// The engine's events as JobEvents, handed to `emit` in order on the thread that runs the job. job_id, seq and
// time are left unset: the event log stamps them.
class JobEventSink final : public job::EventSink {
 public:
  using Emit = std::function<void(sinkscope::v1::JobEvent)>;
  explicit JobEventSink(Emit emit) : emit_(std::move(emit)) {}
  void OnStarted(const job::Started& s) override;
  void OnProgress(const job::Progress& p) override;
  void OnLayer(const job::LayerResult& r) override;
  void OnPerplexity(const job::PerplexityResult& r) override;
  void OnPrompt(const job::PromptResult& r) override;
  void OnSummary(const job::Summary& s) override;

 private:
  template <typename T, typename P>
  void Send(const T& result, P* (sinkscope::v1::JobEvent::*slot)());
  Emit emit_;
};

}  // namespace sinkscope::server
