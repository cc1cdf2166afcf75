// sinkscope batch JOBS --out DIR: many jobs over one or more servers, resumable.
//   - servers: --server a:1,b:1 (each a replica), or a DNS name that resolves to several addresses (each address is
//     a replica); unreachable replicas are left out with a warning. Jobs go to the replica with the fewest jobs in
//     flight; a replica that stops answering is avoided for a while and its jobs' submissions move on.
//   - at most --concurrency jobs in flight (default 2 per replica).
//   - DIR/jobs/<name>.jsonl (every event, `sinkscope plot`-able) and DIR/jobs/<name>.csv per job, DIR/results.csv
//     (long CSV of every job; DIR/results-wide.csv with --wide), DIR/manifest.json (batch_manifest.h).
//   - a rerun with the same DIR skips finished jobs, re-attaches to queued or running ones, resubmits failed ones.
//   - Ctrl-C cancels every job it submitted that is still queued or running, unless --detach (then they keep
//     running and a rerun re-attaches). A second Ctrl-C exits at once.
//   - exit status: 0 every job succeeded; 4 some failed or were cancelled (the others still ran); 5 interrupted;
//     3 no server reachable or credentials refused; 2 a bad jobs file.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/batch_servers.h"
#include "client/commands.h"

namespace sinkscope::client {

struct BatchOptions {
  std::string jobs_file;
  std::string out_dir;
  int concurrency = 0;  // 0 = 2 per replica
  bool detach = false;
  bool progress = false;  // status line on stderr (a terminal, no --quiet)
  bool quiet = false;     // no per-job lines on stderr
  RenderOptions render;   // the final summary's format; render.wide also writes results-wide.csv
};

int RunBatch(const Credentials& cred, const std::vector<std::string>& servers, const BatchOptions& o);

}  // namespace sinkscope::client
