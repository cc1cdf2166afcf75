// What a batch leaves behind besides the per-job files: the combined CSV and the summary (batch.h).
#pragma once

#include <string>
#include <vector>

#include "client/batch_manifest.h"
#include "client/render.h"

namespace sinkscope::client {

// DIR/results.csv: the long CSV of every job's DIR/jobs/<name>.jsonl, in `names` order; with `wide` also
// DIR/results-wide.csv.
void WriteCombinedCsv(const std::string& out_dir, const std::vector<std::string>& names, bool wide);

struct BatchReport {
  std::string out_dir;
  std::string manifest_path;
  RenderOptions render;
  size_t skipped = 0;        // jobs already done before this run
  bool interrupted = false;  // Ctrl-C / SIGTERM
};

// The summary on stdout (table: one row per job, errors in full, totals and where the results are; json: the
// manifest; csv: one row per job); returns the batch's exit status.
int PrintBatchSummary(const Manifest& m, const BatchReport& r);

}  // namespace sinkscope::client
