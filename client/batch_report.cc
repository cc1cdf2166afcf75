#include "client/batch_report.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/exit_codes.h"
#include "client/plot.h"
#include "client/records.h"
#include "client/render.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;
namespace fs = std::filesystem;

void WriteCombinedCsv(const std::string& out_dir, const std::vector<std::string>& names, bool wide) {
  std::ofstream out((fs::path(out_dir) / "results.csv").string(), std::ios::trunc);
  out << LongCsvHeader() << "\n";
  WideCsv table;
  for (const auto& name : names) {
    const std::string path = (fs::path(out_dir) / "jobs" / (name + ".jsonl")).string();
    std::vector<v1::JobEvent> events;
    std::ostringstream ignore;
    if (!fs::exists(path) || ReadEventFiles({path}, &events, ignore) != 0) continue;
    Flattener flat;
    for (const auto& ev : events) {
      const std::vector<Record> recs = flat.Flatten(ev);
      for (const Record& r : recs) {
        std::vector<std::string> f = LongCsvFields(ev.job_id(), r);
        for (auto& x : f) x = CsvField(x);
        out << absl::StrJoin(f, ",") << "\n";
      }
      if (wide) table.Add(ev.job_id(), recs);
    }
  }
  if (wide) {
    std::ofstream w((fs::path(out_dir) / "results-wide.csv").string(), std::ios::trunc);
    table.Write(w);
  }
}

int PrintBatchSummary(const Manifest& m, const BatchReport& r) {
  int ok = 0, failed = 0, pending = 0;
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : m.jobs) {
    ok += e.state == "SUCCEEDED";
    failed += e.state == "FAILED" || e.state == "CANCELLED" || e.state == "LOST";
    pending += !IsTerminal(e.state) && e.state != "LOST";
    rows.push_back({e.name, e.state, e.server, e.job_id, absl::StrFormat("%.1f", e.seconds), e.error});
  }
  const bool wide = r.render.wide;
  if (r.render.format == Format::kJson) {
    std::ifstream in(r.manifest_path);
    std::cout << in.rdbuf();
  } else if (r.render.format == Format::kCsv) {
    std::cout << "name,state,server,job_id,seconds,error\n";
    for (auto& row : rows) {
      for (auto& c : row) c = CsvField(c);
      std::cout << absl::StrJoin(row, ",") << "\n";
    }
  } else {
    if (!wide)
      for (auto& row : rows) row.pop_back();  // errors follow the table, whole
    std::vector<Column> cols = {{"job"}, {"state"}, {"server", false, 3}, {"job id", false, 2}, {"seconds", true, 4}};
    if (wide) cols.push_back({"error"});
    PrintTable(std::cout, cols, rows, wide);
    bool header = false;
    for (const auto& e : m.jobs) {
      if (e.error.empty() || wide) continue;
      if (!header) std::cout << "\nerrors\n";
      header = true;
      std::cout << "  " << e.name << ": " << e.error << "\n";
    }
    std::cout << "\n" << m.jobs.size() << " jobs: " << ok << " succeeded";
    if (r.skipped) std::cout << " (" << r.skipped << " already done before this run)";
    std::cout << ", " << failed << " failed or cancelled";
    if (pending) std::cout << ", " << pending << " not finished";
    std::cout << "\nall jobs (long CSV): " << (fs::path(r.out_dir) / "results.csv").string()
              << (wide ? "  (wide: results-wide.csv)" : "") << "\nper job:  " << (fs::path(r.out_dir) / "jobs").string()
              << "/<job>.jsonl (events) and .csv"
              << "\nmanifest: " << r.manifest_path << "\n";
    if (failed || pending) std::cout << "rerun the same command to retry failed jobs and re-attach to running ones\n";
  }
  if (r.interrupted) return kExitCancelled;
  return failed || pending ? kExitJobFailed : kExitOk;
}

}  // namespace sinkscope::client
