#include "server/sqlite_job_store.h"

#include <fcntl.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"
#include "server/job_state.h"
#include "server/result_cache.h"

namespace sinkscope::server {
namespace v1 = sinkscope::v1;
using Query = SqliteDb::Query;
using google::protobuf::util::TimeUtil;

namespace {

constexpr int kSchemaVersion = 1;
// The SQL below spells the finished states as numbers.
static_assert(v1::JOB_STATE_SUCCEEDED == 3 && v1::JOB_STATE_FAILED == 4 && v1::JOB_STATE_CANCELLED == 5);

constexpr const char* kSchema = R"sql(
CREATE TABLE specs (
  id     INTEGER PRIMARY KEY,
  digest TEXT NOT NULL UNIQUE,
  spec   BLOB NOT NULL);
CREATE TABLE jobs (
  seq         INTEGER PRIMARY KEY,
  id          TEXT NOT NULL UNIQUE,
  owner       TEXT NOT NULL,
  idem_key    TEXT,
  state       INTEGER NOT NULL,
  finished_ms INTEGER,
  bytes       INTEGER NOT NULL,
  closed      INTEGER NOT NULL DEFAULT 0,
  spec_id     INTEGER NOT NULL REFERENCES specs(id),
  request_id  INTEGER NOT NULL REFERENCES specs(id),
  cache_key   TEXT,
  record      BLOB NOT NULL,
  UNIQUE (owner, idem_key));
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE INDEX jobs_open ON jobs(seq) WHERE closed = 0;
CREATE INDEX jobs_by_spec ON jobs(spec_id);
CREATE INDEX jobs_by_request ON jobs(request_id);
CREATE TABLE events (
  job_seq INTEGER NOT NULL REFERENCES jobs(seq) ON DELETE CASCADE,
  seq     INTEGER NOT NULL,
  event   BLOB NOT NULL,
  PRIMARY KEY (job_seq, seq)) WITHOUT ROWID;
CREATE TABLE cache (
  key     TEXT PRIMARY KEY,
  job_seq INTEGER NOT NULL REFERENCES jobs(seq) ON DELETE CASCADE);
CREATE INDEX cache_by_job ON cache(job_seq);
)sql";

constexpr const char* kRecordColumns =
    "SELECT j.seq, j.owner, j.idem_key, j.cache_key, j.record, s.spec, r.spec FROM jobs j "
    "JOIN specs s ON s.id = j.spec_id JOIN specs r ON r.id = j.request_id ";

absl::Status Unknown(const std::string& id) { return absl::NotFoundError(absl::StrCat("unknown job '", id, "'")); }

// The stored Job: its spec lives in `specs`, its event count is the events table's.
std::string RecordBlob(const v1::Job& job) {
  v1::Job j = job;
  j.clear_spec();
  j.clear_num_events();
  return DeterministicBytes(j);
}

int64_t NowMs() { return TimeUtil::TimestampToMilliseconds(Now()); }

}  // namespace

namespace {

// Columns of kRecordColumns → a record.
absl::StatusOr<JobRecord> ReadRecord(const SqliteDb::Query& q) {
  JobRecord r;
  r.seq = static_cast<uint64_t>(q.Int(0));
  r.owner = q.Text(1);
  r.idempotency_key = q.Text(2);
  r.cache_key = q.Text(3);
  if (!r.job.ParseFromString(q.Blob(4)) || !r.job.mutable_spec()->ParseFromString(q.Blob(5)) ||
      !r.request.ParseFromString(q.Blob(6)))
    return absl::DataLossError(absl::StrCat("state store: job #", r.seq, ": unreadable record"));
  return r;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat("state_dir ", dir, ": ", ec.message()));
  std::unique_ptr<SqliteJobStore> s(new SqliteJobStore());
  const std::string lock = (fs::path(dir) / "lock").string();
  s->lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (s->lock_fd_ < 0) return absl::FailedPreconditionError(absl::StrCat("state_dir ", dir, ": cannot open ", lock));
  if (flock(s->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string pid;
    std::ifstream(lock) >> pid;
    return absl::FailedPreconditionError(
        absl::StrCat("state_dir ", dir, " is in use by another sinkscoped (pid ", pid.empty() ? "?" : pid, ")"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(s->lock_fd_, 0) != 0 || write(s->lock_fd_, pid.data(), pid.size()) < 0) {
    // The pid only helps the message above; the lock itself is what matters.
  }
  s->path_ = (fs::path(dir) / "jobs.db").string();
  ASSIGN_OR_RETURN(s->db_, SqliteDb::Open(s->path_));
  RETURN_IF_ERROR(s->Init());
  return s;
}

absl::Status SqliteJobStore::Init() {
  int64_t version = 0;
  {
    Query q(*db_, "PRAGMA user_version");
    if (q.Step()) version = q.Int(0);
    RETURN_IF_ERROR(q.status());
  }
  if (version > kSchemaVersion)
    return absl::FailedPreconditionError(absl::StrCat(path_, ": schema version ", version,
                                                      " is newer than this sinkscoped's (", kSchemaVersion, ")"));
  // auto_vacuum only takes effect before the first table exists.
  if (version == 0) RETURN_IF_ERROR(db_->Exec("PRAGMA auto_vacuum = INCREMENTAL"));
  RETURN_IF_ERROR(db_->Exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON"));
  if (version == 0) {
    RETURN_IF_ERROR(db_->Transaction([&] { return db_->Exec(kSchema); }));
    RETURN_IF_ERROR(db_->Exec(absl::StrCat("PRAGMA user_version = ", kSchemaVersion)));
  }
  return absl::OkStatus();
}

SqliteJobStore::~SqliteJobStore() {
  db_.reset();                           // closed (and checkpointed) before another process may take the lock
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

absl::StatusOr<int64_t> SqliteJobStore::SpecRow(const v1::JobSpec& spec) {
  const std::string blob = DeterministicBytes(spec);
  const std::string digest = util::Sha256Hex(blob);
  RETURN_IF_ERROR(Query(*db_, "INSERT INTO specs(digest, spec) VALUES (?1, ?2) ON CONFLICT(digest) DO NOTHING")
                      .Bind(1, digest)
                      .BindBlob(2, blob)
                      .Run());
  Query q(*db_, "SELECT id FROM specs WHERE digest = ?1");
  q.Bind(1, digest);
  if (q.Step()) return q.Int(0);
  RETURN_IF_ERROR(q.status());
  return absl::InternalError("state store: spec row vanished");
}

absl::StatusOr<int64_t> SqliteJobStore::JobSeqLocked(const std::string& id) const {
  Query q(*db_, "SELECT seq FROM jobs WHERE id = ?1");
  q.Bind(1, id);
  if (q.Step()) return q.Int(0);
  RETURN_IF_ERROR(q.status());
  return Unknown(id);
}

absl::StatusOr<uint64_t> SqliteJobStore::Put(JobRecord record) {
  std::lock_guard<std::mutex> l(mu_);
  const std::string id = record.job.id();
  if (record.job.state() != v1::JOB_STATE_QUEUED)
    return absl::InvalidArgumentError(absl::StrCat("job ", id, ": a new record must be QUEUED"));
  int64_t seq = 0;
  RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    if (JobSeqLocked(id).ok()) return absl::AlreadyExistsError(absl::StrCat("job ", id, " exists"));
    if (!record.idempotency_key.empty()) {
      Query q(*db_, "SELECT 1 FROM jobs WHERE owner = ?1 AND idem_key = ?2");
      q.Bind(1, record.owner).Bind(2, record.idempotency_key);
      if (q.Step())
        return absl::AlreadyExistsError(absl::StrCat("idempotency key '", record.idempotency_key, "' is taken"));
      RETURN_IF_ERROR(q.status());
    }
    ASSIGN_OR_RETURN(const int64_t spec_id, SpecRow(record.job.spec()));
    ASSIGN_OR_RETURN(const int64_t request_id, SpecRow(record.request));
    const std::string blob = RecordBlob(record.job);
    Query ins(*db_,
              "INSERT INTO jobs(id, owner, idem_key, state, bytes, spec_id, request_id, cache_key, record) "
              "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    ins.Bind(1, id).Bind(2, record.owner).Bind(4, record.job.state()).Bind(5, static_cast<int64_t>(blob.size()));
    ins.Bind(6, spec_id).Bind(7, request_id).BindBlob(9, blob);
    if (record.idempotency_key.empty()) ins.BindNull(3); else ins.Bind(3, record.idempotency_key);
    if (record.cache_key.empty()) ins.BindNull(8); else ins.Bind(8, record.cache_key);
    RETURN_IF_ERROR(ins.Run());
    seq = db_->LastInsertRowid();
    return absl::OkStatus();
  }));
  return static_cast<uint64_t>(seq);
}

absl::StatusOr<JobRecord> SqliteJobStore::GetLocked(const std::string& id) const {
  static const std::string sql = absl::StrCat(kRecordColumns, "WHERE j.id = ?1");
  Query q(*db_, sql.c_str());
  q.Bind(1, id);
  if (q.Step()) return ReadRecord(q);
  RETURN_IF_ERROR(q.status());
  return Unknown(id);
}

absl::StatusOr<JobRecord> SqliteJobStore::Get(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  return GetLocked(id);
}

absl::StatusOr<std::string> SqliteJobStore::FindByKey(const std::string& owner, const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  Query q(*db_, "SELECT id FROM jobs WHERE owner = ?1 AND idem_key = ?2");
  q.Bind(1, owner).Bind(2, key);
  if (q.Step()) return q.Text(0);
  RETURN_IF_ERROR(q.status());
  return absl::NotFoundError(absl::StrCat("no job with idempotency key '", key, "'"));
}

JobPage SqliteJobStore::List(const JobQuery& query) const {
  static const std::string sql = absl::StrCat(
      kRecordColumns, "WHERE (?1 = 0 OR (?1 >> j.state) & 1) AND (?2 = '' OR j.owner = ?2) ",
      "ORDER BY j.seq DESC LIMIT ?3 OFFSET ?4");
  int64_t states = 0;
  for (v1::JobState s : query.states) states |= int64_t{1} << s;
  std::lock_guard<std::mutex> l(mu_);
  Query q(*db_, sql.c_str());
  q.Bind(1, states).Bind(2, query.owner);
  q.Bind(3, static_cast<int64_t>(query.limit) + 1).Bind(4, static_cast<int64_t>(query.offset));
  JobPage page;
  while (q.Step()) {
    if (page.records.size() == query.limit) {
      page.more = true;
      break;
    }
    absl::StatusOr<JobRecord> r = ReadRecord(q);
    if (r.ok()) {
      page.records.push_back(*std::move(r));
    } else {
      spdlog::error("{}", r.status().ToString());
    }
  }
  if (!q.status().ok()) spdlog::error("ListJobs: {}", q.status().ToString());
  return page;
}

absl::StatusOr<JobRecord> SqliteJobStore::Update(const std::string& id,
                                                 const std::function<absl::Status(JobRecord&)>& fn) {
  std::lock_guard<std::mutex> l(mu_);
  JobRecord out;
  RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    ASSIGN_OR_RETURN(JobRecord rec, GetLocked(id));
    JobRecord copy = rec;
    RETURN_IF_ERROR(fn(copy));
    const std::string blob = RecordBlob(copy.job);
    Query q(*db_,
            "UPDATE jobs SET state = ?1, finished_ms = ?2, record = ?3, bytes = bytes + ?4 - length(record) "
            "WHERE seq = ?5");
    q.Bind(1, copy.job.state()).BindBlob(3, blob).Bind(4, static_cast<int64_t>(blob.size()));
    q.Bind(5, static_cast<int64_t>(rec.seq));
    if (IsTerminal(copy.job.state())) {
      q.Bind(2, TimeUtil::TimestampToMilliseconds(copy.job.finished_at()));
    } else {
      q.BindNull(2);
    }
    RETURN_IF_ERROR(q.Run());
    out = std::move(copy);
    return absl::OkStatus();
  }));
  return out;
}

std::vector<std::string> SqliteJobStore::ForgetFinished(const Retention& retention) {
  std::lock_guard<std::mutex> l(mu_);
  const int64_t now = NowMs();
  int64_t finished = 0, total = 0;
  {
    // The common case, nothing to forget, costs one aggregate query.
    Query q(*db_, "SELECT sum(state IN (3, 4, 5)), total(bytes), min(finished_ms) FROM jobs");
    if (!q.Step()) return {};
    finished = q.Int(0);
    total = static_cast<int64_t>(q.Real(1));
    const double oldest_age = q.Null(2) ? 0 : 1e-3 * static_cast<double>(now - q.Int(2));
    if (!ShouldForget(retention, finished, total, oldest_age)) return {};
  }
  std::vector<std::pair<int64_t, std::string>> gone;
  const absl::Status st = db_->Transaction([&]() -> absl::Status {
    {
      Query q(*db_, "SELECT seq, id, bytes, finished_ms FROM jobs WHERE state IN (3, 4, 5) ORDER BY seq");
      while (q.Step()) {
        const double age = 1e-3 * static_cast<double>(now - q.Int(3));
        if (!ShouldForget(retention, finished, total, age)) continue;
        --finished;
        total -= q.Int(2);
        gone.emplace_back(q.Int(0), q.Text(1));
      }
      RETURN_IF_ERROR(q.status());
    }
    // The cascade takes the events and the cache entry with the job.
    for (const auto& [seq, id] : gone) RETURN_IF_ERROR(Query(*db_, "DELETE FROM jobs WHERE seq = ?1").Bind(1, seq).Run());
    return Query(*db_,
                 "DELETE FROM specs WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE spec_id = specs.id) "
                 "AND NOT EXISTS (SELECT 1 FROM jobs WHERE request_id = specs.id)")
        .Run();
  });
  if (!st.ok()) {
    spdlog::error("retention: {}", st.ToString());
    return {};
  }
  db_->Exec("PRAGMA incremental_vacuum").IgnoreError();  // give the freed pages back to the file system
  std::vector<std::string> ids;
  for (auto& [seq, id] : gone) ids.push_back(std::move(id));
  return ids;
}

std::vector<JobRecord> SqliteJobStore::Unfinished() const {
  static const std::string sql = absl::StrCat(kRecordColumns, "WHERE j.closed = 0 ORDER BY j.seq");
  std::lock_guard<std::mutex> l(mu_);
  Query q(*db_, sql.c_str());
  std::vector<JobRecord> out;
  while (q.Step()) {
    absl::StatusOr<JobRecord> r = ReadRecord(q);
    if (r.ok()) {
      out.push_back(*std::move(r));
    } else {
      spdlog::error("{}", r.status().ToString());
    }
  }
  if (!q.status().ok()) spdlog::error("recovery: {}", q.status().ToString());
  return out;
}

absl::StatusOr<std::string> SqliteJobStore::FindCached(const std::string& key) const {
  std::lock_guard<std::mutex> l(mu_);
  Query q(*db_, "SELECT j.id FROM cache c JOIN jobs j ON j.seq = c.job_seq WHERE c.key = ?1");
  q.Bind(1, key);
  if (q.Step()) return q.Text(0);
  RETURN_IF_ERROR(q.status());
  return absl::NotFoundError("not cached");
}

absl::Status SqliteJobStore::SetCached(const std::string& key, const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(const int64_t seq, JobSeqLocked(id));
  return Query(*db_,
               "INSERT INTO cache(key, job_seq) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET job_seq = excluded.job_seq")
      .Bind(1, key)
      .Bind(2, seq)
      .Run();
}

absl::Status SqliteJobStore::AppendEvent(const v1::JobEvent& ev) {
  v1::JobEvent stripped = ev;
  stripped.clear_job_id();
  stripped.clear_seq();
  const std::string blob = DeterministicBytes(stripped);
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(const int64_t job_seq, JobSeqLocked(ev.job_id()));
  const auto insert = [&] {
    return Query(*db_, "INSERT INTO events(job_seq, seq, event) VALUES (?1, ?2, ?3)")
        .Bind(1, job_seq)
        .Bind(2, static_cast<int64_t>(ev.seq()))
        .BindBlob(3, blob)
        .Run();
  };
  // One INSERT per event, its own transaction: the job's row (and its record's pages) is not rewritten for every
  // event. Its size is counted once, when the Finished event closes it.
  if (!ev.has_finished()) return insert();
  return db_->Transaction([&]() -> absl::Status {
    RETURN_IF_ERROR(insert());
    return Query(*db_,
                 "UPDATE jobs SET closed = 1, bytes = length(record) + "
                 "(SELECT total(length(event)) FROM events WHERE job_seq = ?1) WHERE seq = ?1")
        .Bind(1, job_seq)
        .Run();
  });
}

absl::StatusOr<std::vector<v1::JobEvent>> SqliteJobStore::LoadEvents(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(const int64_t job_seq, JobSeqLocked(id));
  Query q(*db_, "SELECT seq, event FROM events WHERE job_seq = ?1 ORDER BY seq");
  q.Bind(1, job_seq);
  std::vector<v1::JobEvent> out;
  while (q.Step()) {
    v1::JobEvent& ev = out.emplace_back();
    if (!ev.ParseFromString(q.Blob(1)) || q.Int(0) != static_cast<int64_t>(out.size() - 1))
      return absl::DataLossError(absl::StrCat("state store: job ", id, ": event ", q.Int(0), " unreadable"));
    ev.set_job_id(id);
    ev.set_seq(static_cast<uint64_t>(q.Int(0)));
  }
  RETURN_IF_ERROR(q.status());
  return out;
}

absl::StatusOr<uint64_t> SqliteJobStore::CountEvents(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  ASSIGN_OR_RETURN(const int64_t job_seq, JobSeqLocked(id));
  Query q(*db_, "SELECT coalesce(max(seq) + 1, 0) FROM events WHERE job_seq = ?1");
  q.Bind(1, job_seq);
  if (q.Step()) return static_cast<uint64_t>(q.Int(0));
  RETURN_IF_ERROR(q.status());
  return 0;
}

}  // namespace sinkscope::server
