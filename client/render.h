// Rendering of sinkscope.v1 messages for the CLI: table (human), json (one message per line, protobuf JSON
// mapping with proto field names), csv (long format: kind,model,layer,metric,value). Torch-free.
#pragma once

#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "sinkscope/v1/service.pb.h"

namespace sinkscope::client {

enum class Format { kTable, kJson, kCsv };

// Scalar view of a layer result: ("sink_rate", 0.97), ("bos_norm", 12.3), ("massive.q", 2), ...
std::vector<std::pair<std::string, double>> FlattenLayer(const sinkscope::v1::LayerResult& r);

std::string ToJson(const google::protobuf::Message& m);

// Streams job events; keeps per-model table headers between calls.
class EventRenderer {
 public:
  EventRenderer(Format f, std::ostream& out, bool show_progress) : f_(f), out_(out), progress_(show_progress) {}
  void Render(const sinkscope::v1::JobEvent& ev);

 private:
  void Layer(const sinkscope::v1::LayerResult& r);
  void Perplexity(const sinkscope::v1::PerplexityResult& r);
  void Summary(const sinkscope::v1::Summary& s);
  void ClearProgress();
  void CsvHeader();  // once per stream, before the first layer or perplexity row
  // One row of the long CSV format; `layer` is empty for per-model rows.
  void CsvRow(const std::string& kind, const std::string& model, const std::string& layer, const std::string& metric,
              const std::string& value);
  Format f_;
  std::ostream& out_;
  bool progress_;
  bool csv_header_ = false;
  std::string last_table_model_;
  std::vector<std::string> table_cols_;
  bool ppl_header_ = false;
};

void RenderModels(const sinkscope::v1::ListModelsResponse& r, Format f, std::ostream& out);
void RenderModel(const sinkscope::v1::ModelInfo& m, Format f, std::ostream& out);
void RenderDatasets(const sinkscope::v1::ListDatasetsResponse& r, Format f, std::ostream& out);
void RenderServerInfo(const sinkscope::v1::ServerInfo& r, Format f, std::ostream& out);
void RenderJob(const sinkscope::v1::Job& j, Format f, std::ostream& out);
void RenderJobs(const sinkscope::v1::ListJobsResponse& r, Format f, std::ostream& out);

const char* StateName(sinkscope::v1::JobState s);

}  // namespace sinkscope::client
