// Status propagation helpers (Triton/Abseil style). Torch-free; usable everywhere.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SINKSCOPE_CONCAT_INNER_(a, b) a##b
#define SINKSCOPE_CONCAT_(a, b) SINKSCOPE_CONCAT_INNER_(a, b)

// RETURN_IF_ERROR(expr): evaluates an absl::Status expression and returns it from the caller if not OK.
#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status _sinkscope_status = (expr);      \
    if (!_sinkscope_status.ok()) return _sinkscope_status; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates an absl::StatusOr<T>; on error returns its status, else assigns the value.
// lhs may declare a variable (`ASSIGN_OR_RETURN(const auto x, F())`), so the macro is several statements: give it
// braces as the body of an if / for / case.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(SINKSCOPE_CONCAT_(_sinkscope_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()
