#include "server/log.h"

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace sinkscope::server {

namespace {

// Set by LogJob around its one spdlog call: spdlog formats synchronously, in the calling thread.
thread_local const nlohmann::json* tl_fields = nullptr;

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json j;
    j["ts"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromChrono(msg.time), absl::UTCTimeZone());
    const spdlog::string_view_t level = spdlog::level::to_string_view(msg.level);
    j["level"] = std::string(level.data(), level.size());
    j["msg"] = std::string(msg.payload.data(), msg.payload.size());
    if (tl_fields != nullptr)
      for (const auto& [k, v] : tl_fields->items()) j[k] = v;
    // Invalid UTF-8 (a prompt text in an error message) is replaced, never thrown.
    const std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace

absl::Status SetLogFormat(const std::string& format) {
  if (format == "text") {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  } else if (format == "json") {
    spdlog::set_formatter(std::make_unique<JsonFormatter>());
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--log_format: '", format, "' is not text or json"));
  }
  return absl::OkStatus();
}

void LogJob(spdlog::level::level_enum level, const std::string& id, const nlohmann::json& fields,
            const std::string& text) {
  nlohmann::json all = {{"event", "job"}, {"job", id}};
  all.update(fields);
  tl_fields = &all;
  spdlog::log(level, "{}", text);
  tl_fields = nullptr;
}

}  // namespace sinkscope::server
