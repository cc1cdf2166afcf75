// The engine-side job description and results: plain C++ structs, no protobuf, no torch. The server converts
// sinkscope.v1 messages to/from these (server/convert.*); tests and benches build them directly.
// Field meanings and defaults mirror proto/sinkscope/v1/spec.proto and results.proto (the contract); see docs/analyses.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"

namespace sinkscope::job {

// ----- inputs -----
struct Inputs {
  std::vector<std::string> texts;               // tokenised per model, BOS prepended
  std::vector<std::vector<int32_t>> token_ids;  // used verbatim
  std::string dataset;                          // built-in dataset name
  int32_t max_prompts = 0;                      // 0 = all
};

// ----- observational analyses -----
enum class QueryRows { kAll, kExcludeBos };
enum class AttentionSource { kModel, kPreRotary };
enum class QkvTensor { kQ, kK, kV };
enum class ThresholdScope { kLayer, kHead };
enum class PositionClass { kBos, kRest, kAll };

struct SinkRateSpec {
  double tau = 0.3;
  QueryRows query_rows = QueryRows::kAll;
  AttentionSource source = AttentionSource::kModel;
};
struct MassiveValuesSpec {
  double lambda = 5.0;
  std::vector<QkvTensor> tensors = {QkvTensor::kQ, QkvTensor::kK, QkvTensor::kV};
  bool post_rotary = false;
  ThresholdScope scope = ThresholdScope::kLayer;
  int32_t top_k = 8;
};
struct ResidualStatsSpec {
  bool final_norm_last_layer = false;
};
struct MatrixEntropySpec {
  bool final_norm_last_layer = false;
  bool normalized = false;
};
struct ActivationStatsSpec {
  std::vector<std::string> hooks;  // may contain "{L}"; expanded per model
  int32_t top_k = 8;
};

// ----- interventions -----
enum class Replacement { kZero, kMean };
enum class SpikeRule { kArgmaxRatio, kArgmaxJump };
enum class EditOp { kZero, kScale, kAdd, kMean, kSet };

struct BosMlpAblation {
  std::optional<int32_t> layer;                    // explicit layer, or
  SpikeRule spike_rule = SpikeRule::kArgmaxRatio;  // detected spike layer when layer is unset
};
struct QkMassiveDisruption {
  double lambda = 5.0;
  ThresholdScope scope = ThresholdScope::kLayer;
  Replacement replacement = Replacement::kZero;
  std::optional<Inputs> identify_on;  // unset = the job's inputs
  std::vector<uint64_t> control_seeds;
  bool q = true;
  bool k = true;
};
struct TopPerHeadMeanReplacement {
  int32_t k = 1;
  bool post_rotary = false;
  std::optional<double> lambda;
  bool smallest = false;
};
struct HeadRef {
  int32_t layer = 0;
  int32_t head = 0;
};
struct HeadAblation {
  std::vector<HeadRef> heads;
  Replacement replacement = Replacement::kZero;
};
struct ActivationEdit {
  std::string hook;
  EditOp op = EditOp::kZero;
  double value = 0;
  std::vector<int32_t> positions, heads, dims;  // empty = all
};
using InterventionKind =
    std::variant<BosMlpAblation, QkMassiveDisruption, TopPerHeadMeanReplacement, HeadAblation,
                 std::vector<ActivationEdit>>;
struct Intervention {
  std::string label;  // empty = generated
  InterventionKind kind;
};

struct PerplexitySpec {
  std::vector<Intervention> interventions;
  bool weight_by_t = false;
};

using AnalysisSpec = std::variant<SinkRateSpec, MassiveValuesSpec, ResidualStatsSpec, MatrixEntropySpec,
                                  PerplexitySpec, ActivationStatsSpec>;

struct JobSpec {
  std::vector<std::string> models;  // >= 1; first = reference in comparisons
  Inputs inputs;
  std::vector<AnalysisSpec> analyses;  // >= 1
  int32_t max_tokens = 0;              // per prompt incl. BOS; 0 = server limit
  uint64_t seed = 42;
  bool per_prompt = false;      // also report each prompt's own numbers (EventSink::OnPrompt)
  bool emit_token_ids = false;  // put each prompt's token ids in its PromptResult (implies per_prompt)
  bool truncate_to_context = false;  // cut prompts longer than a model's context (else InvalidArgument)
  bool no_cache = false;             // the server's result cache must not answer this job
};

// ----- results -----
struct Stat {
  double mean = 0, std = 0;
  int32_t n = 0;
};
struct DimEntry {
  int32_t head = 0, dim = 0;
  double value = 0;
};
struct SinkRateLayer {
  Stat sink_rate;
  std::vector<double> head_scores;
  double tau = 0.3;
};
struct MassiveValuesTensor {
  QkvTensor tensor = QkvTensor::kQ;
  Stat count;
  double threshold = 0;
  std::vector<DimEntry> top;
  double gini = 0;
};
struct MassiveValuesLayer {
  std::vector<MassiveValuesTensor> tensors;
  double lambda = 5.0;
  bool post_rotary = false;
};
struct ResidualStatsLayer {
  Stat bos_norm, mean_other_norm, ratio;
  bool post_final_norm = false;
};
struct MatrixEntropyLayer {
  Stat entropy, anisotropy, normalized_entropy;
  bool post_final_norm = false;
};
struct ActivationStatsEntry {
  std::string hook;
  PositionClass positions = PositionClass::kAll;
  int64_t count = 0;
  double mean = 0, std = 0, max_abs = 0, mean_norm = 0, max_norm = 0;
  std::vector<int32_t> top_dims;
  std::vector<double> top_values;
};
struct LayerResult {
  std::string model;
  int32_t layer = 0;  // -1 for model-level hooks
  std::optional<SinkRateLayer> sink_rate;
  std::optional<MassiveValuesLayer> massive_values;
  std::optional<ResidualStatsLayer> residual_stats;
  std::optional<MatrixEntropyLayer> matrix_entropy;
  std::vector<ActivationStatsEntry> activation_stats;
  // Prompts the numbers cover. A job whose baseline runs in several waves (RunLimits.residual_memory_bytes) streams
  // each layer after every wave: partial until the last wave, whose event carries the final numbers.
  int32_t prompts_done = 0, prompts_total = 0;
  bool partial = false;
};
struct PerplexityResult {
  std::string model, condition;
  double perplexity = 0, mean_nll = 0;
  int64_t num_targets = 0;
  double ratio_to_baseline = 1;
  std::vector<double> control_perplexities;
  Stat control;
  std::string detail;
  int32_t resolved_layer = -1;
  int32_t disrupted_dims = 0;
};
struct ComparisonRow {
  std::string metric;
  std::vector<double> values, diffs, ratios;
};
struct ModelSummary {
  std::string model;
  std::map<std::string, double> metrics;
  std::string weights_digest, tokenizer_digest, dtype, device;
  int32_t num_prompts = 0;
  int64_t num_tokens = 0;
  // Forward passes run for this model (baseline + identify + intervention passes); engine-side addition, not in
  // the v1 proto (tests and benches use it to check the planner: one baseline forward per prompt).
  int32_t num_forward_passes = 0;
  // Decoder layers computed over all forwards of this model, each forward counting the layers it ran: L per
  // forward, fewer when an intervention started from the clean residual kept from the baseline (prefix reuse).
  int64_t layers_computed = 0;
  int32_t truncated_prompts = 0;  // prompts cut to max_tokens or (truncate_to_context) to the model's context
};
struct Summary {
  std::vector<ModelSummary> models;
  std::vector<ComparisonRow> comparison;
  std::vector<PerplexityResult> perplexity;
  std::string inputs_digest;
  uint64_t seed = 42;
  double elapsed_seconds = 0;
};
// One prompt's own numbers (JobSpec.per_prompt): what the aggregated results average, before averaging.
struct PromptLayer {
  int32_t layer = 0;
  std::optional<double> sink_rate;  // fraction of heads whose BOS score >= tau
  std::vector<double> head_scores;  // per head: mean attention to BOS over the selected query rows
  std::optional<double> bos_norm, mean_other_norm, bos_ratio;
  std::optional<double> entropy, anisotropy;
  std::vector<int32_t> massive_counts;  // per MassiveValuesSpec tensor, in MassiveValuesLayer order
};
struct PromptPerplexity {
  std::string condition;  // "baseline", a label, or "<label>/control_seed_<s>"
  double nll_sum = 0;
  int32_t num_targets = 0;
  double perplexity = 0;  // exp(nll_sum / num_targets), 0 without targets
};
struct PromptResult {
  std::string model;
  int32_t prompt = 0;
  int32_t num_tokens = 0;
  std::vector<int32_t> token_ids;  // when JobSpec.emit_token_ids
  std::vector<PromptLayer> layers;
  std::vector<PromptPerplexity> perplexity;
};
struct Progress {
  double fraction = 0;
  std::string model, condition;
  int32_t prompt = 0, num_prompts = 0, layer = -1;
};
struct Started {
  int32_t planned_passes = 0;
  int32_t num_prompts = 0;
};

// Receives events from a running job, in order, on the worker thread. Implementations must be quick (the
// server stores and broadcasts them).
class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void OnStarted(const Started&) {}
  virtual void OnProgress(const Progress&) {}
  virtual void OnLayer(const LayerResult&) {}
  virtual void OnPerplexity(const PerplexityResult&) {}
  virtual void OnPrompt(const PromptResult&) {}
  virtual void OnSummary(const Summary&) {}
};

// Checked between layers; returning non-OK (Cancelled / DeadlineExceeded) stops the job with that status.
using CancelCheck = std::function<absl::Status()>;

// Names of the enums as used in docs, JSON and comparison metric names.
const char* Name(QkvTensor t);   // "q" | "k" | "v"
const char* Name(SpikeRule r);   // "argmax_ratio" | "argmax_jump"
const char* Name(PositionClass p);  // "bos" | "rest" | "all"
const char* KindName(const AnalysisSpec& a);  // "sink_rate" | "massive_values" | ... | "activation_stats"

}  // namespace sinkscope::job
