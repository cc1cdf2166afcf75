#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/util/file.h"
#include "common/util/status_macros.h"

namespace sinkscope::server {
namespace fs = std::filesystem;
namespace {

std::string Resolve(const std::string& p, const std::string& base) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base) / p).lexically_normal().string();
}

absl::Status CheckKeys(const YAML::Node& n, const std::string& where, const std::set<std::string>& allowed) {
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    if (!allowed.count(k)) return absl::InvalidArgumentError(absl::StrCat(where, ": unknown key '", k, "'"));
  }
  return absl::OkStatus();
}

// An integer in [min, max].
absl::StatusOr<int64_t> Int(const YAML::Node& n, const std::string& where, int64_t min, int64_t max) {
  int64_t v;
  try {
    v = n.as<int64_t>();
  } catch (const YAML::Exception&) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected an integer"));
  }
  if (v < min || v > max)
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", v, " out of range [", min, ", ", max, "]"));
  return v;
}

// An integer in [min, 2^30].
absl::StatusOr<int32_t> PositiveInt(const YAML::Node& n, const std::string& where, int64_t min = 1) {
  ASSIGN_OR_RETURN(const int64_t v, Int(n, where, min, int64_t{1} << 30));
  return static_cast<int32_t>(v);
}

// A memory budget: bytes, or `auto` / absent (sized from the device by the registry). Returns whether it is auto.
absl::StatusOr<bool> MemoryBytes(const YAML::Node& n, const std::string& where, int64_t* bytes) {
  if (!n) return true;
  if (n.IsScalar() && n.Scalar() == "auto") return true;
  int64_t v;
  if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v))
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected a byte count or auto"));
  ASSIGN_OR_RETURN(*bytes, Int(n, where, 0, int64_t{1} << 50));
  return false;
}

// The `state:` block (config.h).
absl::Status ParseState(const YAML::Node& n, StateConfig* st) {
  if (!n.IsMap()) return absl::InvalidArgumentError("state: must be a mapping");
  RETURN_IF_ERROR(CheckKeys(n, "state", {"interrupted", "keep_finished", "max_bytes", "max_age_days", "cache"}));
  if (n["interrupted"]) {
    const std::string v = n["interrupted"].as<std::string>();
    if (v != "requeue" && v != "fail")
      return absl::InvalidArgumentError(absl::StrCat("state.interrupted: '", v, "' (expected requeue or fail)"));
    st->requeue_interrupted = v == "requeue";
  }
  for (auto [key, field, min] : {std::tuple{"keep_finished", &st->keep_finished, int64_t{1}},
                                 std::tuple{"max_bytes", &st->max_bytes, int64_t{0}}}) {
    if (!n[key]) continue;
    int64_t v;
    try {
      v = n[key].as<int64_t>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError(absl::StrCat("state.", key, ": expected an integer"));
    }
    if (v < min) return absl::InvalidArgumentError(absl::StrCat("state.", key, ": ", v, " must be >= ", min));
    *field = v;
  }
  if (n["max_age_days"]) {
    double v;
    try {
      v = n["max_age_days"].as<double>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError("state.max_age_days: expected a number");
    }
    if (!(v >= 0) || !std::isfinite(v))
      return absl::InvalidArgumentError(absl::StrCat("state.max_age_days: ", v, " must be >= 0"));
    st->max_age_days = v;
  }
  if (n["cache"]) {
    try {
      st->cache = n["cache"].as<bool>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError("state.cache: expected true or false");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: YAML parse error: ", e.what()));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError("config: top level must be a mapping");
  RETURN_IF_ERROR(CheckKeys(root, "config", {"models", "datasets_dir", "limits", "state", "load_timeout_seconds"}));
  ServerConfig cfg;
  if (root["load_timeout_seconds"]) {
    ASSIGN_OR_RETURN(cfg.load_timeout_seconds, PositiveInt(root["load_timeout_seconds"], "load_timeout_seconds"));
  }
  const YAML::Node models = root["models"];
  if (!models || !models.IsSequence() || models.size() == 0)
    return absl::InvalidArgumentError("config: 'models' must be a non-empty list");
  std::set<std::string> names;
  try {
    for (size_t i = 0; i < models.size(); ++i) {
      const std::string where = absl::StrCat("models[", i, "]");
      const YAML::Node m = models[i];
      if (!m.IsMap()) return absl::InvalidArgumentError(absl::StrCat(where, ": must be a mapping"));
      RETURN_IF_ERROR(CheckKeys(m, where, {"name", "path", "dtype", "device", "digest", "tokenizer", "description"}));
      ModelConfig mc;
      if (!m["name"] || !m["path"])
        return absl::InvalidArgumentError(absl::StrCat(where, ": 'name' and 'path' are required"));
      mc.name = m["name"].as<std::string>();
      if (mc.name.empty() || mc.name.find_first_of(" \t/") != std::string::npos)
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: '", mc.name, "' is empty or has spaces/slashes"));
      if (!names.insert(mc.name).second)
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: duplicate '", mc.name, "'"));
      mc.path = Resolve(m["path"].as<std::string>(), base_dir);
      if (m["dtype"]) mc.dtype = m["dtype"].as<std::string>();
      if (mc.dtype != "float32" && mc.dtype != "bfloat16" && mc.dtype != "float16")
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".dtype: '", mc.dtype, "' (expected float32, bfloat16 or float16)"));
      if (m["device"]) mc.device = m["device"].as<std::string>();
      if (mc.device != "cpu" && mc.device.rfind("cuda", 0) != 0)
        return absl::InvalidArgumentError(absl::StrCat(where, ".device: '", mc.device, "' (expected cpu or cuda[:N])"));
      if (m["digest"]) {
        try {
          mc.digest = m["digest"].as<bool>();
        } catch (const YAML::Exception&) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".digest: expected true or false"));
        }
      }
      if (m["tokenizer"]) mc.tokenizer = Resolve(m["tokenizer"].as<std::string>(), base_dir);
      if (m["description"]) mc.description = m["description"].as<std::string>();
      cfg.models.push_back(std::move(mc));
    }
    if (root["datasets_dir"]) cfg.datasets_dir = Resolve(root["datasets_dir"].as<std::string>(), base_dir);
    cfg.limits.data_dir = cfg.datasets_dir;
    if (const YAML::Node l = root["limits"]) {
      if (!l.IsMap()) return absl::InvalidArgumentError("limits: must be a mapping");
      RETURN_IF_ERROR(CheckKeys(l, "limits",
                                {"max_tokens_per_prompt", "max_prompts_per_job", "max_queued_jobs", "pack_tokens",
                                 "max_tokens_per_job", "max_planned_passes", "forward_memory_bytes",
                                 "residual_memory_bytes", "max_request_bytes", "attention"}));
      for (auto [key, field] : {std::pair{"max_tokens_per_prompt", &cfg.limits.max_tokens_per_prompt},
                                std::pair{"max_prompts_per_job", &cfg.limits.max_prompts},
                                std::pair{"max_queued_jobs", &cfg.max_queued_jobs},
                                std::pair{"max_planned_passes", &cfg.limits.max_planned_passes}}) {
        if (l[key]) {
          ASSIGN_OR_RETURN(*field, PositiveInt(l[key], absl::StrCat("limits.", key)));
        }
      }
      // 0 is allowed: one prompt per forward.
      if (l["pack_tokens"]) {
        ASSIGN_OR_RETURN(cfg.limits.pack_tokens, PositiveInt(l["pack_tokens"], "limits.pack_tokens", /*min=*/0));
      }
      if (l["max_tokens_per_job"]) {
        ASSIGN_OR_RETURN(cfg.limits.max_tokens_per_job,
                         Int(l["max_tokens_per_job"], "limits.max_tokens_per_job", 1, int64_t{1} << 50));
      }
      // 0: no budget.
      ASSIGN_OR_RETURN(cfg.forward_memory_auto,
                       MemoryBytes(l["forward_memory_bytes"], "limits.forward_memory_bytes",
                                   &cfg.limits.forward_memory_bytes));
      // 0: no budget (one wave).
      ASSIGN_OR_RETURN(cfg.residual_memory_auto,
                       MemoryBytes(l["residual_memory_bytes"], "limits.residual_memory_bytes",
                                   &cfg.limits.residual_memory_bytes));
      if (l["attention"]) {
        const std::string a = l["attention"].as<std::string>();
        using Attention = job::RunLimits::Attention;
        if (a != "auto" && a != "equal" && a != "padded")
          return absl::InvalidArgumentError(
              absl::StrCat("limits.attention: '", a, "' (expected auto, equal or padded)"));
        cfg.limits.attention = a == "auto"    ? Attention::kAuto
                               : a == "equal" ? Attention::kEqualLength
                                              : Attention::kPadded;
      }
      if (l["max_request_bytes"]) {
        ASSIGN_OR_RETURN(cfg.max_request_bytes,
                         PositiveInt(l["max_request_bytes"], "limits.max_request_bytes", /*min=*/1024));
      }
    }
    if (root["state"]) RETURN_IF_ERROR(ParseState(root["state"], &cfg.state));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
  return cfg;
}

absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, util::ReadFile(path));
  return ParseServerConfig(text, fs::absolute(fs::path(path)).parent_path().string());
}

}  // namespace sinkscope::server
