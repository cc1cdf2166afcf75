#include "server/sqlite_db.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {

absl::Status SqliteDb::Error(int rc, const std::string& what) const {
  const std::string msg = absl::StrCat("state store: ", what, ": ", sqlite3_errstr(rc),
                                       db_ ? absl::StrCat(" (", sqlite3_errmsg(db_), ")") : "");
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<std::unique_ptr<SqliteDb>> SqliteDb::Open(const std::string& path) {
  std::unique_ptr<SqliteDb> db(new SqliteDb());
  const int rc =
      sqlite3_open_v2(path.c_str(), &db->db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) return db->Error(rc, absl::StrCat("open ", path));
  sqlite3_busy_timeout(db->db_, 5000);
  return db;
}

SqliteDb::~SqliteDb() {
  for (auto& [sql, st] : stmts_) sqlite3_finalize(st);
  if (db_) sqlite3_close(db_);  // the last connection checkpoints the WAL into the database file
}

absl::Status SqliteDb::Exec(const std::string& sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  sqlite3_free(err);
  return rc == SQLITE_OK ? absl::OkStatus() : Error(rc, sql);
}

absl::Status SqliteDb::Transaction(const std::function<absl::Status()>& fn) {
  RETURN_IF_ERROR(Query(*this, "BEGIN IMMEDIATE").Run());
  absl::Status st = fn();
  if (st.ok()) st = Query(*this, "COMMIT").Run();
  if (!st.ok() && !sqlite3_get_autocommit(db_)) Query(*this, "ROLLBACK").Run().IgnoreError();
  return st;
}

int64_t SqliteDb::LastInsertRowid() const { return sqlite3_last_insert_rowid(db_); }

sqlite3_stmt* SqliteDb::Prepared(const char* sql) {
  for (auto& [text, st] : stmts_)
    if (text == sql) return st;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) return nullptr;
  stmts_.emplace_back(sql, st);
  return st;
}

SqliteDb::Query::Query(SqliteDb& db, const char* sql) : db_(db), st_(db.Prepared(sql)), sql_(sql) {
  if (st_ == nullptr) status_ = db_.Error(sqlite3_errcode(db_.db_), sql_);
}

SqliteDb::Query::~Query() {
  if (st_ == nullptr) return;
  sqlite3_reset(st_);
  sqlite3_clear_bindings(st_);
}

SqliteDb::Query& SqliteDb::Query::Bind(int i, int64_t v) {
  if (st_) sqlite3_bind_int64(st_, i, v);
  return *this;
}

SqliteDb::Query& SqliteDb::Query::Bind(int i, const std::string& text) {
  if (st_) sqlite3_bind_text(st_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  return *this;
}

SqliteDb::Query& SqliteDb::Query::BindBlob(int i, const std::string& blob) {
  if (st_) sqlite3_bind_blob(st_, i, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  return *this;
}

SqliteDb::Query& SqliteDb::Query::BindNull(int i) {
  if (st_) sqlite3_bind_null(st_, i);
  return *this;
}

bool SqliteDb::Query::Step() {
  if (!status_.ok()) return false;
  const int rc = sqlite3_step(st_);
  if (rc == SQLITE_ROW) return true;
  if (rc != SQLITE_DONE) status_ = db_.Error(rc, sql_);
  return false;
}

absl::Status SqliteDb::Query::Run() {
  while (Step()) {
  }
  return status_;
}

bool SqliteDb::Query::Null(int c) const { return sqlite3_column_type(st_, c) == SQLITE_NULL; }
int64_t SqliteDb::Query::Int(int c) const { return sqlite3_column_int64(st_, c); }
double SqliteDb::Query::Real(int c) const { return sqlite3_column_double(st_, c); }

std::string SqliteDb::Query::Text(int c) const {
  const unsigned char* p = sqlite3_column_text(st_, c);
  return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(st_, c)) : std::string();
}

std::string SqliteDb::Query::Blob(int c) const {
  const void* p = sqlite3_column_blob(st_, c);
  return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(st_, c)) : std::string();
}

}  // namespace sinkscope::server
