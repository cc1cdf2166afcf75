#include "client/batch.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "client/batch_file.h"
#include "client/batch_manifest.h"
#include "client/batch_runner.h"

namespace sinkscope::client {
namespace fs = std::filesystem;

int RunBatch(const Credentials& cred, const std::vector<std::string>& servers, const BatchOptions& o) {
  absl::StatusOr<std::vector<BatchJob>> jobs = ReadBatchFile(o.jobs_file);
  if (!jobs.ok()) {
    std::cerr << "sinkscope: batch: " << jobs.status().message() << "\n";
    return kExitUsage;
  }
  absl::StatusOr<std::vector<Replica>> resolved = ResolveServers(servers, SystemResolve);
  if (!resolved.ok()) {
    std::cerr << "sinkscope: " << resolved.status().message() << "\n";
    return kExitUsage;
  }
  std::vector<Replica> live;
  if (int rc = ProbeReplicas(cred, *resolved, o.quiet, &live); rc != kExitOk) return rc;
  std::error_code ec;
  fs::create_directories(fs::path(o.out_dir) / "jobs", ec);
  if (ec) {
    std::cerr << "sinkscope: batch: cannot create " << o.out_dir << ": " << ec.message() << "\n";
    return kExitUsage;
  }
  // One batch per directory at a time.
  const std::string lock_path = (fs::path(o.out_dir) / ".lock").string();
  const int lock_fd = open(lock_path.c_str(), O_CREAT | O_RDWR, 0644);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    std::cerr << "sinkscope: batch: another batch is running in " << o.out_dir << "\n";
    return kExitUsage;
  }
  Manifest m;
  absl::StatusOr<Manifest> old = LoadManifest((fs::path(o.out_dir) / "manifest.json").string());
  if (old.ok()) {
    m = *std::move(old);
  } else if (!absl::IsNotFound(old.status())) {
    std::cerr << "sinkscope: batch: " << old.status().message() << "\n";
    return kExitUsage;
  }
  m.jobs_file = fs::absolute(o.jobs_file).string();
  BatchRunner runner(cred, std::move(live), o, *std::move(jobs), std::move(m));
  const int code = runner.Run();
  close(lock_fd);
  return code;
}

}  // namespace sinkscope::client
