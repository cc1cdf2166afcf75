// Whole-file I/O used across the project (configs, tokenizer models, datasets, checkpoints' indexes, exports).
// Torch-free.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sinkscope::util {

// The file's bytes. Errors name the path: NotFound ("PATH: no such file"), InvalidArgument for a directory,
// PermissionDenied when it cannot be opened, DataLoss on a read error.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `bytes` to PATH.tmp, then renames it over `path` (parent directories are created), so a reader never sees
// a half-written file.
absl::Status WriteFileAtomic(const std::string& path, const std::string& bytes);

}  // namespace sinkscope::util
