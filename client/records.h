// Every number a job's events carry, as long-format records: the one flattening behind CSV (long and --wide), the
// batch's combined CSV, the terminal tables and the figures. Nothing is rounded here and nothing is dropped:
// standard deviations, prompt counts, per-head scores, top entries, per-prompt results, provenance.
//
//   kind               model  condition  prompt  layer  head  metric                        value / text
//   job                                                        planned_passes, num_prompts, inputs_digest, seed, ...
//   layer              m      baseline           L             sink_rate, sink_rate.std, bos_norm, massive.q.count, ...
//   head               m      baseline           L      h      head_score
//   perplexity         m      c                                perplexity, mean_nll, num_targets, ratio_to_baseline,
//   ... summary            m                                       the model's summary scalars (sink_rate.mean, ...)
//   comparison         m                                       <metric>.diff (and .ratio where a ratio means something)
//   provenance         m      [c]                              weights_digest, dtype, num_tokens, detail, ...
//   prompt             m              p                        num_tokens, token_ids (text, space-separated)
//   prompt_layer       m      baseline   p       L             sink_rate, bos_norm, bos_ratio, entropy, massive.q.count
//   prompt_head        m      baseline   p       L      h      head_score
//   prompt_perplexity  m      c          p                     nll_sum, num_targets, perplexity
//   state                                                      state, error_code, error_message
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

struct Record {
  std::string kind;
  std::string model;
  std::string condition;
  std::optional<int> prompt;
  std::optional<int> layer;
  std::optional<int> head;
  std::string metric;
  double value = 0;
  std::string text;  // set (and value unused) for text records: digests, dtype, detail, state, token ids
  bool is_text = false;
};

// CSV header of the long format; Fields(r) is one row under it (job_id first).
const char* LongCsvHeader();
std::vector<std::string> LongCsvFields(const std::string& job_id, const Record& r);

// Whether a ratio between two values of `metric` means something: not for layer indices, percentages or
// differences (where the comparison shows a difference only).
bool RatioMeaningful(const std::string& metric);

// Short names of the enum values the records use: "q", "bos", "SUCCEEDED".
const char* TensorName(sinkscope::v1::QkvTensor t);
const char* PositionName(sinkscope::v1::PositionClass p);
const char* StateName(sinkscope::v1::JobState s);

// Flattens events in stream order. Keeps the little context a later event needs: the order of a model's massive
// tensors (PromptLayerMetrics.massive_counts follows MassiveValuesLayer.tensors; Q, K, V when never seen).
class Flattener {
 public:
  std::vector<Record> Flatten(const sinkscope::v1::JobEvent& ev);

 private:
  std::map<std::string, std::vector<std::string>> tensors_;  // model -> tensor names in layer-result order
};

}  // namespace sinkscope::client
