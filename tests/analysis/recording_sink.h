// An EventSink that records every event in order (torch-free), plus small JobSpec helpers for analysis_tests.
#pragma once

#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "common/job/job_spec.h"
#include "common/job/plan.h"

namespace sinkscope::analysis_test {

struct RecordingSink : job::EventSink {
  using Event = std::variant<job::Started, job::Progress, job::LayerResult, job::PerplexityResult, job::PromptResult,
                             job::Summary>;
  std::vector<Event> events;
  std::function<void(const job::LayerResult&)> on_layer;  // optional extra callback

  void OnStarted(const job::Started& s) override { events.emplace_back(s); }
  void OnProgress(const job::Progress& p) override { events.emplace_back(p); }
  void OnLayer(const job::LayerResult& r) override {
    if (on_layer) on_layer(r);
    events.emplace_back(r);
  }
  void OnPerplexity(const job::PerplexityResult& r) override { events.emplace_back(r); }
  void OnPrompt(const job::PromptResult& r) override { events.emplace_back(r); }
  void OnSummary(const job::Summary& s) override { events.emplace_back(s); }

  template <class T>
  std::vector<T> All() const {
    std::vector<T> out;
    for (const auto& e : events)
      if (const T* p = std::get_if<T>(&e)) out.push_back(*p);
    return out;
  }
  // Layer results of one model, indexed by layer (-1 results excluded).
  std::vector<job::LayerResult> Layers(const std::string& model) const {
    std::vector<job::LayerResult> out;
    for (const auto& r : All<job::LayerResult>())
      if (r.model == model && r.layer >= 0) out.push_back(r);
    return out;
  }
  const job::PerplexityResult* Ppl(const std::string& model, const std::string& condition) const {
    for (const auto& e : events)
      if (const auto* p = std::get_if<job::PerplexityResult>(&e); p && p->model == model && p->condition == condition)
        return p;
    return nullptr;
  }
};

inline job::JobSpec Spec(std::vector<std::string> models, std::vector<std::vector<int32_t>> prompts,
                         std::vector<job::AnalysisSpec> analyses) {
  job::JobSpec s;
  s.models = std::move(models);
  s.inputs.token_ids = std::move(prompts);
  s.analyses = std::move(analyses);
  return s;
}

inline job::CancelCheck NoCancel() {
  return [] { return absl::OkStatus(); };
}

}  // namespace sinkscope::analysis_test
