// The batch manifest (<out>/manifest.json): what a batch submitted where and how it ended, rewritten atomically
// after every change so that a rerun — after a crash, a Ctrl-C with --detach, or failures — resumes: finished jobs
// are skipped, running ones re-attached, failed ones resubmitted.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

struct ManifestEntry {
  std::string name;
  std::string fingerprint;  // of the JobSpec: an edited job is a new job
  std::string server;       // replica the job was (or is being) submitted to
  std::string tls_name;     // name TLS verifies when `server` is a resolved address
  std::string job_id;
  // PENDING (not submitted), SUBMITTING (server chosen; a rerun resubmits with the same idempotency key),
  // QUEUED, RUNNING, LOST (contact lost while running; a rerun re-attaches), SUCCEEDED, FAILED, CANCELLED.
  std::string state = "PENDING";
  int attempt = 0;     // resubmissions after FAILED / CANCELLED
  int error_code = 0;  // gRPC code of the failure
  std::string error;
  double seconds = 0;  // wall time of the last attempt, client side
};

struct Manifest {
  std::string jobs_file;
  std::vector<ManifestEntry> jobs;
};

// NotFound when there is no manifest yet.
absl::StatusOr<Manifest> LoadManifest(const std::string& path);
// Writes `path` through a temporary file and a rename, so a crash never leaves half a manifest.
absl::Status SaveManifest(const std::string& path, const Manifest& m);
// FNV-1a (64-bit, hex) of the spec's deterministic binary encoding: identifies a job's content across runs (and
// between the CLI and the python client, which compute it alike).
std::string Fingerprint(const sinkscope::v1::JobSpec& spec);
bool IsTerminal(const std::string& state);

}  // namespace sinkscope::client
