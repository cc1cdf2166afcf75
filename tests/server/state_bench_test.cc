// The SQLite job store on this machine's disk, measured (printed; asserted only for sanity): write throughput as
// the job manager drives it (jobs/s, events/s) and the recovery time of a restart with N finished jobs.
// SINKSCOPE_STATE_BENCH_JOBS=N scales it (default 200 jobs of 50 events).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/job_manager.h"
#include "server/job_state.h"
#include "server/sqlite_job_store.h"

namespace fs = std::filesystem;
namespace v1 = sinkscope::v1;
using sinkscope::server::JobRecord;
using sinkscope::server::SqliteJobStore;

namespace {

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A layer result of a 32-head model (what most of a real job's events look like), ~0.5 KB serialized.
v1::JobEvent LayerEvent(const std::string& id, uint64_t seq) {
  v1::JobEvent ev;
  ev.set_job_id(id);
  ev.set_seq(seq);
  auto* l = ev.mutable_layer();
  l->set_model("llama-2-7b");
  l->set_layer(static_cast<int32_t>(seq));
  for (int h = 0; h < 32; ++h) l->mutable_sink_rate()->add_head_scores(0.01 * h);
  l->mutable_sink_rate()->mutable_sink_rate()->set_mean(0.5);
  l->mutable_residual_stats()->mutable_bos_norm()->set_mean(712.5);
  l->mutable_matrix_entropy()->mutable_entropy()->set_mean(3.2);
  return ev;
}

absl::Status Move(SqliteJobStore& s, const std::string& id, v1::JobState to) {
  return s.Update(id, [&](JobRecord& r) { return sinkscope::server::SetState(&r.job, to, absl::OkStatus()); })
      .status();
}

TEST(StateBench, SqliteWriteThroughputAndRecovery) {
  const char* env = std::getenv("SINKSCOPE_STATE_BENCH_JOBS");
  const int jobs = env ? std::atoi(env) : 200, events = 50;
  const fs::path dir = fs::path(testing::TempDir()) / absl::StrCat("sinkscope-state-bench-", getpid());
  fs::remove_all(dir);
  sinkscope::server::Retention keep;
  keep.keep_finished = jobs;
  {
    auto store = SqliteJobStore::Open(dir.string());
    ASSERT_TRUE(store.ok()) << store.status();
    SqliteJobStore& s = **store;
    const auto t0 = std::chrono::steady_clock::now();
    for (int j = 0; j < jobs; ++j) {
      // What JobManager does for one job: accept, run (progress into the record, every event stored), finish.
      JobRecord r;
      const std::string id = absl::StrCat("j-", j);
      r.job.set_id(id);
      r.job.set_state(v1::JOB_STATE_QUEUED);
      r.job.mutable_spec()->add_models("llama-2-7b");
      r.job.mutable_spec()->mutable_inputs()->set_dataset("brown-heldout");
      r.job.mutable_spec()->add_analyses()->mutable_sink_rate()->set_tau(0.3);
      r.request = r.job.spec();
      r.owner = "alice";
      r.cache_key = absl::StrCat("key-", j);
      ASSERT_TRUE(s.Put(r).ok());
      ASSERT_TRUE(Move(s, id, v1::JOB_STATE_RUNNING).ok());
      for (int e = 0; e < events; ++e) {
        if (e % 5 == 0) {
          ASSERT_TRUE(s.Update(id, [&](JobRecord& rec) {
            rec.job.set_progress(e / 50.0);
            return absl::OkStatus();
          }).ok());
        }
        ASSERT_TRUE(s.AppendEvent(LayerEvent(id, e)).ok());
      }
      ASSERT_TRUE(Move(s, id, v1::JOB_STATE_SUCCEEDED).ok());
      v1::JobEvent fin;
      fin.set_job_id(id);
      fin.set_seq(events);
      fin.mutable_finished()->set_state(v1::JOB_STATE_SUCCEEDED);
      ASSERT_TRUE(s.AppendEvent(fin).ok());
      ASSERT_TRUE(s.SetCached(r.cache_key, id).ok());
      s.ForgetFinished(keep);
    }
    const double write_s = Since(t0);
    const double writes = jobs * (2.0 + events / 5.0 + events + 1 + 2);
    std::printf("[ state bench ] %d jobs x %d events: %.2f s = %.0f jobs/s, %.0f events/s (%.0f transactions/s)\n",
                jobs, events + 1, write_s, jobs / write_s, jobs * (events + 1) / write_s, writes / write_s);
  }
  std::printf("[ state bench ] database %.1f MiB for %d jobs\n",
              static_cast<double>(fs::file_size(dir / "jobs.db")) / (1 << 20), jobs);

  // A restart: open, recover (nothing unfinished), retention, then what the first clients ask.
  const auto t0 = std::chrono::steady_clock::now();
  auto store = SqliteJobStore::Open(dir.string());
  ASSERT_TRUE(store.ok());
  sinkscope::server::JobManager::Options o;
  o.retention = keep;
  sinkscope::server::JobManager manager(o, /*registry=*/nullptr, *std::move(store));
  manager.Recover();
  const double open_s = Since(t0);
  auto page = manager.List(v1::ListJobsRequest());
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs_size(), std::min(jobs, 50));
  v1::JobEvent ev;
  ASSERT_EQ(*manager.events().Next("j-0", events, &ev, [] {}), sinkscope::server::EventLog::Poll::kEvent);
  EXPECT_TRUE(ev.has_finished());
  std::printf("[ state bench ] restart with %d finished jobs: recovered in %.3f s, first ListJobs page and a full "
              "replay after %.3f s\n", jobs, open_s, Since(t0));
  fs::remove_all(dir);
}

}  // namespace
