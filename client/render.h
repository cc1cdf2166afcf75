// Rendering of sinkscope.v1 messages for the CLI. Torch-free.
//   table: for a human; fits 100 columns (--wide: every column), streamed as events arrive.
//   json:  one message per line, protobuf JSON with proto field names and every field present (defaults included);
//          each event line carries its job_id. 64-bit integers are strings (proto3 JSON mapping).
//   csv:   long format (records.h: job_id,kind,model,condition,prompt,layer,head,metric,value,text), numbers in
//          shortest round-trip form; --wide pivots to one row per (job, model, condition, prompt, layer) with one
//          column per metric and per-head columns (head_score.h0, ...), written when the stream ends.
#pragma once

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "client/format.h"
#include "client/records.h"
#include "sinkscope/v1/service.pb.h"

namespace sinkscope::client {

struct RenderOptions {
  Format format = Format::kTable;
  bool wide = false;
  // Table on a terminal: partial layer rows (a job whose baseline runs in several waves) are replaced in place by
  // the next wave's rows; otherwise every row is a plain line, partial ones marked as such.
  bool rewrite_partial = false;
};

// Renders a job's events in stream order; Finish() writes what a format holds back (the --wide CSV, the per-prompt
// tables of an unfinished stream). Several jobs may go through one renderer (the CSV header is written once).
class EventRenderer {
 public:
  EventRenderer(RenderOptions o, std::ostream& out);
  ~EventRenderer();
  void Render(const sinkscope::v1::JobEvent& ev);
  void Finish();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Wide CSV: records pivoted to one row per (job, model, condition, prompt, layer).
class WideCsv {
 public:
  void Add(const std::string& job_id, const std::vector<Record>& records);
  void Write(std::ostream& out) const;

 private:
  struct Row {
    std::vector<std::string> key;  // job_id, model, condition, prompt, layer
    std::map<std::string, std::string> cells;
  };
  std::vector<Row> rows_;
  std::map<std::vector<std::string>, size_t> index_;
  std::vector<std::string> columns_;
  std::map<std::string, bool> known_;
};

void RenderModels(const sinkscope::v1::ListModelsResponse& r, const RenderOptions& o, std::ostream& out);
void RenderModel(const sinkscope::v1::ModelInfo& m, const RenderOptions& o, std::ostream& out);
void RenderDatasets(const sinkscope::v1::ListDatasetsResponse& r, const RenderOptions& o, std::ostream& out);
void RenderServerInfo(const sinkscope::v1::ServerInfo& r, const RenderOptions& o, std::ostream& out);
void RenderJob(const sinkscope::v1::Job& j, const RenderOptions& o, std::ostream& out);
void RenderJobs(const sinkscope::v1::ListJobsResponse& r, const RenderOptions& o, std::ostream& out);

}  // namespace sinkscope::client
