#include "client/batch_file.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/job_flags.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;
using nlohmann::json;

namespace {

absl::Status At(const std::string& where, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
}

absl::StatusOr<v1::JobSpec> SpecFromJson(const std::string& text) {
  v1::JobSpec spec;
  auto st = google::protobuf::util::JsonStringToMessage(text, &spec, google::protobuf::util::JsonParseOptions());
  if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("not a JobSpec: ", std::string(st.message())));
  return spec;
}

// YAML → JSON. Unquoted scalars become booleans, integers or numbers when they read as one, so `tau: 0.5` and
// `per_prompt: true` mean what they say; quoted scalars stay strings.
json ToJson(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& x : n) a.push_back(ToJson(x));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.as<std::string>()] = ToJson(kv.second);
      return o;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;
      if (s == "true" || s == "false") return s == "true";
      if (s == "null" || s == "~") return nullptr;
      int64_t i;
      if (absl::SimpleAtoi(s, &i)) return i;
      double d;
      if (absl::SimpleAtod(s, &d) && s.find_first_of("0123456789") != std::string::npos) return d;
      return s;
    }
    default: return nullptr;
  }
}

std::string SafeName(const std::string& s) {
  std::string out;
  for (char c : s)
    out += absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ? c : '_';
  while (!out.empty() && out[0] == '.') out.erase(0, 1);
  return out.substr(0, 80);
}

// One job from its JSON form (a JobSpec, a {name, spec|args} wrapper, or a string of CLI words).
absl::StatusOr<BatchJob> FromJson(const json& j, const std::string& where, const std::string& base_dir) {
  BatchJob job;
  job.where = where;
  auto from_args = [&](const json& args) -> absl::Status {
    std::vector<std::string> words;
    if (args.is_string()) {
      absl::StatusOr<std::vector<std::string>> w = SplitWords(args.get<std::string>());
      if (!w.ok()) return At(where, w.status().message());
      words = *w;
    } else if (args.is_array()) {
      for (const auto& a : args) {
        if (!a.is_string()) return At(where, "\"args\" must be a string or a list of strings");
        words.push_back(a.get<std::string>());
      }
    } else {
      return At(where, "\"args\" must be a string or a list of strings");
    }
    absl::StatusOr<v1::JobSpec> spec = ParseJobArgs(words, base_dir);
    if (!spec.ok()) return At(where, spec.status().message());
    job.spec = *std::move(spec);
    return absl::OkStatus();
  };
  if (j.is_string()) {
    if (auto st = from_args(j); !st.ok()) return st;
    return job;
  }
  if (!j.is_object()) return At(where, "a job is a JSON object (a JobSpec, or {name, spec|args}) or CLI flags");
  if (j.contains("spec") || j.contains("args")) {
    for (const auto& [k, v] : j.items())
      if (k != "name" && k != "spec" && k != "args")
        return At(where, absl::StrCat("unknown key \"", k, "\" (a wrapper has name, and spec or args)"));
    if (j.contains("spec") && j.contains("args")) return At(where, "give \"spec\" or \"args\", not both");
    if (j.contains("name")) {
      if (!j["name"].is_string()) return At(where, "\"name\" must be a string");
      job.name = j["name"].get<std::string>();
    }
    if (j.contains("args")) {
      if (auto st = from_args(j["args"]); !st.ok()) return st;
      return job;
    }
    const json& s = j["spec"];
    std::string text;
    if (s.is_string()) {  // a JobSpec file
      std::string path = s.get<std::string>();
      if (!base_dir.empty() && !path.empty() && path[0] != '/') path = base_dir + "/" + path;
      std::ifstream in(path);
      if (!in) return At(where, absl::StrCat("cannot read spec file ", path));
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    } else {
      text = s.dump();
    }
    absl::StatusOr<v1::JobSpec> spec = SpecFromJson(text);
    if (!spec.ok()) return At(where, spec.status().message());
    job.spec = *std::move(spec);
    return job;
  }
  absl::StatusOr<v1::JobSpec> spec = SpecFromJson(j.dump());
  if (!spec.ok()) return At(where, spec.status().message());
  job.spec = *std::move(spec);
  return job;
}

// Default names, file-safe, unique.
void NameJobs(std::vector<BatchJob>* jobs) {
  std::map<std::string, int> seen;
  for (size_t i = 0; i < jobs->size(); ++i) {
    BatchJob& j = (*jobs)[i];
    std::string name = SafeName(!j.name.empty() ? j.name : j.spec.label());
    if (name.empty()) name = absl::StrFormat("job-%03d", i + 1);
    std::string unique = name;
    for (int k = 2; seen.count(unique); ++k) unique = absl::StrCat(name, "-", k);
    seen[unique] = 1;
    j.name = unique;
  }
}

}  // namespace

absl::StatusOr<std::vector<BatchJob>> ParseBatchText(const std::string& text, bool yaml, const std::string& where,
                                                     const std::string& base_dir) {
  std::vector<BatchJob> jobs;
  if (yaml) {
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      return At(where, absl::StrCat("not YAML: ", e.what()));
    }
    if (root.IsMap() && root["jobs"]) root = root["jobs"];
    if (!root.IsSequence()) return At(where, "expected a list of jobs (or a map with a `jobs:` list)");
    for (size_t i = 0; i < root.size(); ++i) {
      const std::string w = absl::StrCat(where, ": jobs[", i, "] (line ", root[i].Mark().line + 1, ")");
      absl::StatusOr<BatchJob> j = FromJson(ToJson(root[i]), w, base_dir);
      if (!j.ok()) return j.status();
      jobs.push_back(*std::move(j));
    }
  } else {
    int n = 0;
    for (absl::string_view raw : absl::StrSplit(text, '\n')) {
      ++n;
      const std::string line(absl::StripAsciiWhitespace(raw));
      if (line.empty() || line[0] == '#') continue;
      const std::string w = absl::StrCat(where, ":", n);
      json j;
      if (line[0] == '{' || line[0] == '"') {
        j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return At(w, "not valid JSON");
      } else {
        j = line;  // CLI-style flags
      }
      absl::StatusOr<BatchJob> job = FromJson(j, w, base_dir);
      if (!job.ok()) return job.status();
      jobs.push_back(*std::move(job));
    }
  }
  if (jobs.empty()) return At(where, "no jobs");
  NameJobs(&jobs);
  return jobs;
}

absl::StatusOr<std::vector<BatchJob>> ReadBatchFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const bool yaml = absl::EndsWith(path, ".yaml") || absl::EndsWith(path, ".yml");
  const std::string base = std::filesystem::path(path).parent_path().string();
  return ParseBatchText(ss.str(), yaml, path, base.empty() ? "." : base);
}

}  // namespace sinkscope::client
