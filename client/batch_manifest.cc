#include "client/batch_manifest.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_format.h"

namespace sinkscope::client {
using nlohmann::json;

absl::StatusOr<Manifest> LoadManifest(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("jobs"))
    return absl::DataLossError(path + ": not a sinkscope batch manifest (remove it to start over)");
  Manifest m;
  m.jobs_file = j.value("jobs_file", "");
  for (const auto& e : j["jobs"]) {
    ManifestEntry x;
    x.name = e.value("name", "");
    x.fingerprint = e.value("fingerprint", "");
    x.server = e.value("server", "");
    x.tls_name = e.value("tls_name", "");
    x.job_id = e.value("job_id", "");
    x.state = e.value("state", "PENDING");
    x.attempt = e.value("attempt", 0);
    x.error_code = e.value("error_code", 0);
    x.error = e.value("error", "");
    x.seconds = e.value("seconds", 0.0);
    m.jobs.push_back(std::move(x));
  }
  return m;
}

absl::Status SaveManifest(const std::string& path, const Manifest& m) {
  json j;
  j["version"] = 1;
  j["jobs_file"] = m.jobs_file;
  j["jobs"] = json::array();
  for (const auto& x : m.jobs)
    j["jobs"].push_back({{"name", x.name},
                         {"fingerprint", x.fingerprint},
                         {"server", x.server},
                         {"tls_name", x.tls_name},
                         {"job_id", x.job_id},
                         {"state", x.state},
                         {"attempt", x.attempt},
                         {"error_code", x.error_code},
                         {"error", x.error},
                         {"seconds", x.seconds}});
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(1) << "\n";
    if (!out.flush()) return absl::InternalError("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return absl::InternalError("cannot rename " + tmp);
  return absl::OkStatus();
}

std::string Fingerprint(const sinkscope::v1::JobSpec& spec) {
  // Deterministic binary protobuf is canonical for a JobSpec (no maps): the python client fingerprints alike.
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream raw(&bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    out.SetSerializationDeterministic(true);
    spec.SerializeToCodedStream(&out);
  }
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return absl::StrFormat("%016x", h);
}

bool IsTerminal(const std::string& s) { return s == "SUCCEEDED" || s == "FAILED" || s == "CANCELLED"; }

}  // namespace sinkscope::client
