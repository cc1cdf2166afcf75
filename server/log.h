// Server logs: text lines (default) or JSON, one object per line (--log_format json), for log shippers.
//
//   text: 2026-12-01T03:38:13.466 info job j-43df... succeeded in 0.52 s
//   json: {"ts":"2026-12-01T03:38:13.466Z","level":"info","msg":"job j-43df... succeeded in 0.52 s",
//          "event":"job","job":"j-43df...","state":"SUCCEEDED","principal":"alice","models":["tiny-rope"],
//          "run_seconds":0.52,"queue_seconds":0.01,"outcome":"ok"}
//
// Every job transition (accepted, running, interrupted, requeued, succeeded, failed, cancelled) is one line whose
// JSON carries the fields of LogJob; other lines carry ts, level and msg.
#pragma once

#include <spdlog/common.h>

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json_fwd.hpp"

namespace sinkscope::server {

// "text" or "json"; InvalidArgument otherwise. Applies to the default spdlog logger.
absl::Status SetLogFormat(const std::string& format);

// One job transition: `text` is the human line; `fields` (an object) are added to it in JSON mode, with
// "event":"job" and "job":id.
void LogJob(spdlog::level::level_enum level, const std::string& id, const nlohmann::json& fields,
            const std::string& text);

}  // namespace sinkscope::server
