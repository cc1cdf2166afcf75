#include "client/format.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_format.h"

namespace sinkscope::client {

std::string Num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == std::floor(v) && std::fabs(v) < 1e9) return absl::StrFormat("%.0f", v);
  const double a = std::fabs(v);
  if (a < 1e-3 || a >= 1e6) return absl::StrFormat("%.4g", v);
  return absl::StrFormat("%.4f", v);
}

std::string Exact(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  // No precision argument: the shortest representation that round-trips (C++17 <charconv>).
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return absl::StrFormat("%.17g", v);
  return std::string(buf, end);
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  o.add_whitespace = false;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

size_t DisplayWidth(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string Clip(const std::string& s, size_t n) {
  if (DisplayWidth(s) <= n) return s;
  if (n == 0) return "";
  std::string out;
  size_t w = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80 && ++w > n - 1) break;
    out += s[i];
  }
  return out + "…";
}

void PrintTable(std::ostream& out, const std::vector<Column>& cols, const std::vector<std::vector<std::string>>& rows,
                bool wide, const std::string& indent) {
  const size_t n = cols.size();
  std::vector<size_t> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = DisplayWidth(cols[i].header);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < n; ++i) w[i] = std::max(w[i], DisplayWidth(r[i]));
  std::vector<bool> keep(n, true);
  auto width = [&] {
    size_t total = indent.size(), shown = 0;
    for (size_t i = 0; i < n; ++i)
      if (keep[i]) total += w[i] + (shown++ ? 2 : 0);
    return total;
  };
  size_t hidden = 0;
  while (!wide && width() > kTableWidth) {
    // Drop the lowest-priority column still shown (the rightmost among equals); priority 0 stays.
    int victim = -1;
    for (size_t i = 0; i < n; ++i)
      if (keep[i] && cols[i].priority > 0 && (victim < 0 || cols[i].priority <= cols[victim].priority))
        victim = static_cast<int>(i);
    if (victim < 0) break;
    keep[victim] = false;
    ++hidden;
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s = indent;
    bool first = true;
    for (size_t i = 0; i < n; ++i) {
      if (!keep[i]) continue;
      const std::string cell = i < r.size() ? r[i] : "";
      const std::string pad(w[i] - std::min(w[i], DisplayWidth(cell)), ' ');
      if (!first) s += "  ";
      first = false;
      s += cols[i].right ? pad + cell : cell + pad;
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    out << s << "\n";
  };
  std::vector<std::string> header, rule;
  for (size_t i = 0; i < n; ++i) {
    header.push_back(cols[i].header);
    rule.push_back(std::string(w[i], '-'));
  }
  line(header);
  line(rule);
  for (const auto& r : rows) line(r);
  if (hidden > 0)
    out << indent << "(" << hidden << " column" << (hidden > 1 ? "s" : "") << " hidden; --wide shows all)\n";
}

}  // namespace sinkscope::client
