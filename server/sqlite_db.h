// A SQLite connection as the job store uses it: statements prepared once per SQL text and reused, errors as
// absl::Status (SQLITE_FULL → RESOURCE_EXHAUSTED, BUSY/LOCKED → UNAVAILABLE, else INTERNAL), transactions.
// Not thread-safe: the owner serializes every call (SqliteJobStore holds one mutex around each of its calls).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct sqlite3;
struct sqlite3_stmt;

namespace sinkscope::server {

class SqliteDb {
 public:
  // Opens or creates the database file (no mutex of SQLite's own: the owner serializes).
  static absl::StatusOr<std::unique_ptr<SqliteDb>> Open(const std::string& path);
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // One or more statements whose rows, if any, are not wanted (schema, pragmas).
  absl::Status Exec(const std::string& sql);
  // Runs `fn` inside BEGIN IMMEDIATE ... COMMIT; rolls back and returns fn's error when it fails.
  absl::Status Transaction(const std::function<absl::Status()>& fn);
  int64_t LastInsertRowid() const;

  // A prepared statement, cached by the address of its SQL text (pass string literals or strings that live as
  // long as the connection): bind, step, read columns; reset when the Query goes out of scope. Two live Queries
  // must not share one SQL text.
  class Query {
   public:
    Query(SqliteDb& db, const char* sql);
    ~Query();
    Query& Bind(int i, int64_t v);
    Query& Bind(int i, const std::string& text);  // empty text binds '' (use BindNull for NULL)
    Query& BindBlob(int i, const std::string& blob);
    Query& BindNull(int i);
    // True for a row; false when done or on error (then status() says which).
    bool Step();
    absl::Status Run();  // steps to the end
    const absl::Status& status() const { return status_; }
    bool Null(int c) const;
    int64_t Int(int c) const;
    double Real(int c) const;
    std::string Text(int c) const;
    std::string Blob(int c) const;

   private:
    SqliteDb& db_;
    sqlite3_stmt* st_;
    const char* sql_;
    absl::Status status_;
  };

 private:
  SqliteDb() = default;
  sqlite3_stmt* Prepared(const char* sql);
  absl::Status Error(int rc, const std::string& what) const;

  sqlite3* db_ = nullptr;
  std::vector<std::pair<const char*, sqlite3_stmt*>> stmts_;
};

}  // namespace sinkscope::server
