// Text primitives shared by the CLI's outputs: numbers for humans and for machines, CSV fields, JSON lines, and
// tables that fit the terminal. Torch-free, no gRPC.
#pragma once

#include <google/protobuf/message.h>

#include <ostream>
#include <string>
#include <vector>

namespace sinkscope::client {

enum class Format { kTable, kJson, kCsv };

// Tables fit this many columns unless --wide (the 80/120-column complaint: 100 fits both layouts).
inline constexpr size_t kTableWidth = 100;

// A number for a human: 4 significant decimals ("0.7188", "1.234e+05", "12"); "nan", "inf".
std::string Num(double v);
// A number for a machine: the shortest decimal that reads back as the same double ("0.71875", "1e-10", "12").
std::string Exact(double v);
// A CSV field: quoted (with doubled quotes) only when it contains a comma, quote or newline.
std::string CsvField(const std::string& s);
// One message as one line of protobuf JSON: proto field names, every field present (defaults included).
// proto3's JSON mapping writes 64-bit integers (int64/uint64: seq, num_tokens, num_targets, seed, ...) as strings.
std::string ToJson(const google::protobuf::Message& m);

// A table column: its header, whether numbers align right, and how readily it is dropped to fit the width
// (higher priority stays longer; priority 0 columns are never dropped).
struct Column {
  std::string header;
  bool right = false;
  int priority = 0;
};

// Prints a header, a rule and the rows. Unless `wide`, drops the lowest-priority columns until a line fits
// kTableWidth, and says how many it dropped ("(2 columns hidden; --wide shows all)"). `indent` prefixes every line.
void PrintTable(std::ostream& out, const std::vector<Column>& cols, const std::vector<std::vector<std::string>>& rows,
                bool wide, const std::string& indent = "");
// `s` cut to `n` characters (UTF-8 aware), with "…" at the end when cut.
std::string Clip(const std::string& s, size_t n);
// Display width of a UTF-8 string (code points; the CLI prints no wide characters).
size_t DisplayWidth(const std::string& s);

}  // namespace sinkscope::client
