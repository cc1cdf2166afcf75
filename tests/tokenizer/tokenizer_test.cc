// Golden tests: the C++ SentencePiece BPE tokenizer must give exactly the ids (and decoded text) of the reference
// implementation, python3-sentencepiece, for the shipped tokenizer and for tokenizers trained at test time by
// make_goldens.py (identity / nmt_nfkc / nfkc_cf normalisers, byte fallback on and off, user-defined and control
// symbols, whitespace as suffix, no dummy prefix, UNUSED pieces). Plus: metadata, round trips, bad model files,
// concurrency.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/tokenizer/sentencepiece_model.pb.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/file.h"
#include "common/util/sha256.h"

namespace sinkscope::tokenizer {
namespace {

using nlohmann::json;

std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

const std::string kRepo = EnvOr("SINKSCOPE_TOK_REPO_ROOT", SINKSCOPE_TOK_REPO_ROOT);
const std::string kShippedDir = kRepo + "/models/tokenizer";
const std::string kShippedModel = kShippedDir + "/tokenizer.model";

std::string FromHex(const std::string& hex) {
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Shows bytes readably in failure messages.
std::string Show(const std::string& s, size_t max = 160) {
  std::string out;
  for (unsigned char c : s.substr(0, max)) {
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > max) out += absl::StrCat("...(", s.size(), " bytes)");
  return out;
}

std::string ShowIds(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> parts;
  for (int32_t id : ids) parts.push_back(absl::StrCat(id, ":", Show(tok.IdToPiece(id), 24)));
  return absl::StrCat("[", absl::StrJoin(parts, " "), "]");
}

std::string ReadBytes(const std::string& path) {
  absl::StatusOr<std::string> bytes = sinkscope::util::ReadFile(path);
  return bytes.ok() ? *bytes : std::string();
}

void WriteBytes(const std::string& path, const std::string& data) {
  ASSERT_TRUE(sinkscope::util::WriteFileAtomic(path, data).ok()) << path;
}

// ---------------------------------------------------------------------------------------------------------------
// make_goldens.py runs once per process, before any test.
class Goldens : public ::testing::Environment {
 public:
  static const json& Get() { return *data_; }
  static const std::string& Dir() { return dir_; }

  void SetUp() override {
    dir_ = EnvOr("SINKSCOPE_TOK_WORK_DIR", SINKSCOPE_TOK_WORK_DIR);
    const std::string python = EnvOr("SINKSCOPE_PYTHON", SINKSCOPE_TOK_PYTHON);
    const std::string script = EnvOr("SINKSCOPE_TOK_GOLDEN_SCRIPT", SINKSCOPE_TOK_GOLDEN_SCRIPT);
    const std::string cmd =
        absl::StrCat("'", python, "' '", script, "' --repo '", kRepo, "' --out '", dir_, "'");
    const int rc = std::system(cmd.c_str());
    ASSERT_EQ(rc, 0) << "golden generation failed: " << cmd;
    std::ifstream f(dir_ + "/goldens.json");
    ASSERT_TRUE(f.good()) << "missing " << dir_ << "/goldens.json";
    data_ = std::make_unique<json>(json::parse(f));
  }

 private:
  static inline std::unique_ptr<json> data_;
  static inline std::string dir_;
};

// Tokenizers are loaded once per model name.
std::shared_ptr<const SentencePieceTokenizer> Model(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const SentencePieceTokenizer>> cache;
  if (auto it = cache.find(name); it != cache.end()) return it->second;
  const std::string path = Goldens::Get()["models"][name]["path"];
  auto tok = SentencePieceTokenizer::Create(ReadBytes(path), path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!tok.ok()) return nullptr;
  cache[name] = *tok;
  return *tok;
}

const std::vector<std::string> kModels = {"shipped", "identity_bytes", "identity_unused",
                                          "nfkc_unk", "suffix_pad", "no_prefix"};

class GoldenTest : public ::testing::TestWithParam<std::string> {};

// Runs `mismatch(case)` over the goldens of `kind` for `model`; it returns a description of a mismatch, or
// "" when ours agrees. The first 8 mismatches are reported; at least `min_cases` cases must exist.
void CheckGoldens(const std::string& model, const char* kind, int min_cases,
                  const std::function<std::string(const json&)>& mismatch) {
  int cases = 0, mismatches = 0;
  for (const json& c : Goldens::Get()[kind]) {
    if (c["model"] != model) continue;
    ++cases;
    const std::string why = mismatch(c);
    if (!why.empty() && ++mismatches <= 8) ADD_FAILURE() << model << ": " << why;
  }
  EXPECT_EQ(mismatches, 0) << "of " << cases << " " << kind << " cases";
  EXPECT_GT(cases, min_cases);
}

TEST_P(GoldenTest, EncodeMatchesSentencepiece) {
  const auto tok = Model(GetParam());
  ASSERT_NE(tok, nullptr);
  CheckGoldens(GetParam(), "encode", 500, [&](const json& c) -> std::string {
    const std::string text = FromHex(c["text"]);
    const std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tok->Encode(text, /*add_bos=*/false);
    if (got == want) return "";
    return absl::StrCat("text \"", Show(text), "\"\n  normalized \"", Show(tok->Normalize(text)),
                        "\"\n  sentencepiece ", ShowIds(*tok, want), "\n  ours          ", ShowIds(*tok, got));
  });
}

TEST_P(GoldenTest, EncodeWithBosPrependsBosOnly) {
  const auto tok = Model(GetParam());
  ASSERT_NE(tok, nullptr);
  ASSERT_GE(tok->bos_id(), 0);
  for (const char* text : {"", "Hello world", "  x "}) {
    std::vector<int32_t> want = {tok->bos_id()};
    for (int32_t id : tok->Encode(text, false)) want.push_back(id);
    EXPECT_EQ(tok->Encode(text), want) << text;
    EXPECT_EQ(tok->Encode(text, true), want) << text;
  }
}

TEST_P(GoldenTest, DecodeMatchesSentencepiece) {
  const auto tok = Model(GetParam());
  ASSERT_NE(tok, nullptr);
  CheckGoldens(GetParam(), "decode", 300, [&](const json& c) -> std::string {
    const std::vector<int32_t> ids = c["ids"].get<std::vector<int32_t>>();
    const std::string want = FromHex(c["text"]);
    const std::string got = tok->Decode(ids);
    auto strict = tok->TryDecode(ids);
    if (!strict.ok()) return absl::StrCat("ids ", ShowIds(*tok, ids), ": TryDecode failed: ", strict.status().ToString());
    if (*strict != got) return absl::StrCat("ids ", ShowIds(*tok, ids), ": TryDecode and Decode differ");
    if (got == want) return "";
    return absl::StrCat("ids ", ShowIds(*tok, ids), "\n  sentencepiece \"", Show(want), "\"\n  ours          \"",
                        Show(got), "\"");
  });
}

TEST_P(GoldenTest, MetadataAndVocabularyMatch) {
  const auto tok = Model(GetParam());
  ASSERT_NE(tok, nullptr);
  const json& m = Goldens::Get()["models"][GetParam()];
  EXPECT_EQ(tok->vocab_size(), m["vocab_size"].get<int>());
  EXPECT_EQ(tok->bos_id(), m["bos_id"].get<int>());
  EXPECT_EQ(tok->eos_id(), m["eos_id"].get<int>());
  EXPECT_EQ(tok->unk_id(), m["unk_id"].get<int>());
  EXPECT_EQ(tok->pad_id(), m["pad_id"].get<int>());
  EXPECT_EQ(tok->digest(), m["sha256"].get<std::string>());
  const std::map<std::string, PieceType> types = {{"normal", PieceType::kNormal},   {"control", PieceType::kControl},
                                                  {"unknown", PieceType::kUnknown}, {"byte", PieceType::kByte},
                                                  {"unused", PieceType::kUnused}};
  int bad = 0;
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    const std::string piece = m["vocab"][id][0];
    const std::string type = m["vocab"][id][1];
    PieceType got_type = tok->piece_type(id);
    if (got_type == PieceType::kUserDefined) got_type = PieceType::kNormal;  // python reports those as normal
    if ((tok->IdToPiece(id) != piece || tok->PieceToId(piece) != id || got_type != types.at(type)) && ++bad <= 5) {
      ADD_FAILURE() << "id " << id << ": python " << Show(piece) << " (" << type << "), ours "
                    << Show(tok->IdToPiece(id)) << " type " << static_cast<int>(tok->piece_type(id))
                    << " PieceToId " << tok->PieceToId(piece);
    }
    EXPECT_EQ(tok->IsControl(id), type == "control") << id;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(tok->IdToPiece(-1), "");
  EXPECT_EQ(tok->IdToPiece(tok->vocab_size()), "");
  EXPECT_EQ(tok->PieceToId("no such piece \x01"), tok->unk_id());
}

TEST_P(GoldenTest, EncodeAsPiecesAgreesWithIds) {
  const auto tok = Model(GetParam());
  ASSERT_NE(tok, nullptr);
  const std::string text = "Hello, world! 2024 caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80";
  std::vector<std::string> want;
  for (int32_t id : tok->Encode(text, false)) want.push_back(tok->IdToPiece(id));
  EXPECT_EQ(tok->EncodeAsPieces(text), want);
  // The interface's generic default gives the same.
  EXPECT_EQ(tok->Tokenizer::EncodeAsPieces(text), want);
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest, ::testing::ValuesIn(kModels),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---------------------------------------------------------------------------------------------------------------
// Test-time models really cover what they are meant to cover (otherwise the goldens would prove less).
TEST(TestModels, CoverTheIntendedFeatures) {
  const auto unused = Model("identity_unused");
  const auto nfkc = Model("nfkc_unk");
  const auto suffix = Model("suffix_pad");
  const auto no_prefix = Model("no_prefix");
  const auto identity = Model("identity_bytes");
  ASSERT_TRUE(unused && nfkc && suffix && no_prefix && identity);
  int n_unused = 0;
  for (int32_t id = 0; id < unused->vocab_size(); ++id) n_unused += unused->piece_type(id) == PieceType::kUnused;
  EXPECT_GT(n_unused, 20);
  EXPECT_TRUE(nfkc->has_charsmap());
  EXPECT_EQ(nfkc->normalizer_name(), "nmt_nfkc");
  EXPECT_FALSE(nfkc->byte_fallback());
  EXPECT_TRUE(suffix->has_charsmap());
  EXPECT_EQ(suffix->normalizer_name(), "nfkc_cf");
  EXPECT_EQ(suffix->pad_id(), 3);
  EXPECT_FALSE(no_prefix->add_dummy_prefix());
  EXPECT_EQ(identity->piece_type(identity->PieceToId("<tool_call>")), PieceType::kUserDefined);
  EXPECT_EQ(identity->piece_type(identity->PieceToId("<ctrl>")), PieceType::kControl);
  // User-defined symbols: longest match wins, kept whole.
  const auto tool_pieces = identity->EncodeAsPieces("x<tool_call>y<tool>");
  EXPECT_EQ(std::count(tool_pieces.begin(), tool_pieces.end(), "<tool_call>"), 1) << absl::StrJoin(tool_pieces, " ");
  EXPECT_EQ(std::count(tool_pieces.begin(), tool_pieces.end(), "<tool>"), 1) << absl::StrJoin(tool_pieces, " ");
  // Unknown runs collapse to one <unk> without byte fallback; NFKC folds full-width letters; the denormaliser
  // turns '?' into '!'.
  EXPECT_EQ(nfkc->Encode("\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80", false).size(), 2u);  // ▁ + one unk
  EXPECT_EQ(nfkc->Normalize("\xef\xbc\xa1\xef\xbc\xa2  x "), "\xe2\x96\x81" "AB\xe2\x96\x81x");
  EXPECT_EQ(nfkc->Decode(nfkc->Encode("a?b", false)), "a!b");
  EXPECT_EQ(suffix->Normalize(" Hi  There"), "\xe2\x96\x81hi\xe2\x96\x81\xe2\x96\x81there\xe2\x96\x81");
}

// ---------------------------------------------------------------------------------------------------------------
// The shipped tokenizer: Llama-2 conventions.
TEST(Shipped, LoadsFromDirWithLlamaConventions) {
  auto loaded = Tokenizer::LoadFromDir(kShippedDir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& tok = **loaded;
  EXPECT_EQ(tok.vocab_size(), 4096);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.IdToPiece(0), "<unk>");
  EXPECT_EQ(tok.IdToPiece(1), "<s>");
  EXPECT_EQ(tok.IdToPiece(2), "</s>");
  EXPECT_EQ(tok.IdToPiece(3), "<0x00>");
  EXPECT_EQ(tok.IdToPiece(258), "<0xFF>");
  auto file_digest = util::Sha256File(kShippedModel);
  ASSERT_TRUE(file_digest.ok());
  EXPECT_EQ(tok.digest(), *file_digest);

  const auto* sp = dynamic_cast<const SentencePieceTokenizer*>(&tok);
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(sp->normalizer_name(), "identity");
  EXPECT_FALSE(sp->has_charsmap());
  EXPECT_TRUE(sp->add_dummy_prefix());
  EXPECT_FALSE(sp->remove_extra_whitespaces());
  EXPECT_TRUE(sp->byte_fallback());
  EXPECT_EQ(sp->Normalize(" Hello  world "), "\xe2\x96\x81\xe2\x96\x81Hello\xe2\x96\x81\xe2\x96\x81world\xe2\x96\x81");
  // split_digits: every digit its own piece; an unseen character falls back to its UTF-8 bytes.
  const std::vector<int32_t> ids = tok.Encode("1964 \xe2\x98\x83", false);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(tok.IdToPiece(id));
  EXPECT_EQ(pieces, (std::vector<std::string>{"\xe2\x96\x81", "1", "9", "6", "4", "\xe2\x96\x81", "<0xE2>", "<0x98>",
                                              "<0x83>"}));
}

// Strict UTF-8 check (no overlong forms, surrogates or code points above U+10FFFF).
bool IsValidUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (b < 0x80) {
      len = 1, cp = b;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

// Decode(Encode(x)) == x for valid UTF-8 without a literal U+2581 (identity normaliser, no whitespace removal,
// byte fallback): the shipped tokenizer loses nothing.
TEST(Shipped, RoundTripsText) {
  auto tok = Tokenizer::Load(kShippedModel);
  ASSERT_TRUE(tok.ok()) << tok.status();
  int checked = 0;
  for (const json& c : Goldens::Get()["encode"]) {
    if (c["model"] != "shipped") continue;
    const std::string text = FromHex(c["text"]);
    if (!IsValidUtf8(text) || text.find("\xe2\x96\x81") != std::string::npos) continue;
    EXPECT_EQ((*tok)->Decode((*tok)->Encode(text)), text) << Show(text);
    ++checked;
  }
  EXPECT_GT(checked, 1000);
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
}

// ---------------------------------------------------------------------------------------------------------------
TEST(Decode, OutOfRangeIds) {
  auto tok = Tokenizer::Load(kShippedModel);
  ASSERT_TRUE(tok.ok());
  const std::vector<int32_t> ids = {(*tok)->PieceToId("\xe2\x96\x81the"), 99999, -5};
  auto strict = (*tok)->TryDecode(ids);
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(strict.status().message().find("99999"), std::string::npos) << strict.status();
  EXPECT_NE(strict.status().message().find("position 1"), std::string::npos) << strict.status();
  EXPECT_EQ((*tok)->Decode(ids), "the \xe2\x81\x87  \xe2\x81\x87 ");
}

TEST(Concurrency, ParallelEncodeIsDeterministic) {
  auto tok = Tokenizer::Load(kShippedModel);
  ASSERT_TRUE(tok.ok());
  std::vector<std::string> texts;
  for (const json& c : Goldens::Get()["encode"]) {
    if (c["model"] == "shipped") texts.push_back(FromHex(c["text"]));
  }
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back((*tok)->Encode(t));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (size_t i = w; i < texts.size(); i += 2) mismatches[w] += (*tok)->Encode(texts[i]) != serial[i];
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// ---------------------------------------------------------------------------------------------------------------
// Bad model files: clear errors that name the file.
class BadModel : public ::testing::Test {
 protected:
  static std::string Path(const std::string& name) { return Goldens::Dir() + "/bad-" + name; }
  static absl::Status LoadBytes(const std::string& name, const std::string& bytes) {
    WriteBytes(Path(name), bytes);
    return Tokenizer::Load(Path(name)).status();
  }
  static void ExpectError(const absl::Status& st, absl::StatusCode code, const std::string& path,
                          const std::string& words) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(st.message().find(path), std::string::npos) << "error must name " << path << ": " << st;
    EXPECT_NE(st.message().find(words), std::string::npos) << "error must say '" << words << "': " << st;
  }
  static spm::ModelProto ShippedProto() {
    spm::ModelProto m;
    EXPECT_TRUE(m.ParseFromString(ReadBytes(kShippedModel)));
    return m;
  }
};

TEST_F(BadModel, MissingFileAndDirectory) {
  const std::string missing = Goldens::Dir() + "/no-such-dir/tokenizer.model";
  ExpectError(Tokenizer::Load(missing).status(), absl::StatusCode::kNotFound, missing, "no such file");
  ExpectError(Tokenizer::LoadFromDir(Goldens::Dir() + "/no-such-dir").status(), absl::StatusCode::kNotFound,
              missing, "no such file");
  ExpectError(Tokenizer::Load(Goldens::Dir()).status(), absl::StatusCode::kInvalidArgument, Goldens::Dir(),
              "directory");
}

TEST_F(BadModel, EmptyAndGarbageFiles) {
  ExpectError(LoadBytes("empty", ""), absl::StatusCode::kInvalidArgument, Path("empty"), "empty");
  ExpectError(LoadBytes("text", "this is a text file, not a tokenizer\n"), absl::StatusCode::kInvalidArgument,
              Path("text"), "not a SentencePiece model");
  std::mt19937 rng(1234);
  for (int i = 0; i < 20; ++i) {
    std::string junk(1 + rng() % 5000, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    const std::string name = absl::StrCat("random", i);
    ExpectError(LoadBytes(name, junk), absl::StatusCode::kInvalidArgument, Path(name), "SentencePiece model");
  }
  // A JSON tokenizer (HF tokenizer.json) is not a ModelProto either.
  ExpectError(LoadBytes("json", R"({"version": "1.0", "model": {"type": "BPE", "vocab": {}}})"),
              absl::StatusCode::kInvalidArgument, Path("json"), "not a SentencePiece model");
}

TEST_F(BadModel, TruncatedFiles) {
  const std::string full = ReadBytes(kShippedModel);
  ASSERT_GT(full.size(), 1000u);
  std::vector<size_t> cuts = {1, 2, 7, 100, 1000, full.size() / 2, full.size() - 30, full.size() - 1};
  // Cuts exactly at field boundaries (a whole number of pieces; all pieces but no specs; no normalizer_spec):
  // they parse as protobuf, so the loader must notice what is missing.
  const spm::ModelProto m = ShippedProto();
  spm::ModelProto pieces_only;
  *pieces_only.mutable_pieces() = m.pieces();
  cuts.push_back(pieces_only.SerializeAsString().size());
  spm::ModelProto no_normalizer = pieces_only;
  *no_normalizer.mutable_trainer_spec() = m.trainer_spec();
  cuts.push_back(no_normalizer.SerializeAsString().size());
  ASSERT_EQ(full.compare(0, cuts.back(), no_normalizer.SerializeAsString()), 0);
  for (size_t cut : cuts) {
    const std::string name = absl::StrCat("truncated", cut);
    const absl::Status st = LoadBytes(name, full.substr(0, cut));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << cut << ": " << st;
    EXPECT_NE(st.message().find(Path(name)), std::string::npos) << st;
    EXPECT_TRUE(st.message().find("truncated") != std::string::npos ||
                st.message().find("no pieces") != std::string::npos)
        << cut << ": " << st;
  }
}

TEST_F(BadModel, UnsupportedModelTypes) {
  const std::string unigram = Goldens::Get()["unigram_model"];
  ExpectError(Tokenizer::Load(unigram).status(), absl::StatusCode::kUnimplemented, unigram, "UNIGRAM");
  for (auto type : {spm::TrainerSpec::WORD, spm::TrainerSpec::CHAR}) {
    spm::ModelProto m = ShippedProto();
    m.mutable_trainer_spec()->set_model_type(type);
    const std::string name = absl::StrCat("type", static_cast<int>(type));
    ExpectError(LoadBytes(name, m.SerializeAsString()), absl::StatusCode::kUnimplemented, Path(name),
                type == spm::TrainerSpec::WORD ? "WORD" : "CHAR");
  }
}

TEST_F(BadModel, InconsistentVocabularies) {
  {
    spm::ModelProto m = ShippedProto();
    m.clear_pieces();
    ExpectError(LoadBytes("nopieces", m.SerializeAsString()), absl::StatusCode::kInvalidArgument, Path("nopieces"),
                "no pieces");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_pieces(100)->set_piece(m.pieces(99).piece());
    ExpectError(LoadBytes("duplicate", m.SerializeAsString()), absl::StatusCode::kInvalidArgument, Path("duplicate"),
                "already defined");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_pieces(500)->set_piece("");
    ExpectError(LoadBytes("emptypiece", m.SerializeAsString()), absl::StatusCode::kInvalidArgument,
                Path("emptypiece"), "piece 500 is empty");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_pieces(0)->set_type(spm::ModelProto::SentencePiece::NORMAL);
    ExpectError(LoadBytes("nounk", m.SerializeAsString()), absl::StatusCode::kInvalidArgument, Path("nounk"),
                "no unknown");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_pieces(3 + 0x41)->set_type(spm::ModelProto::SentencePiece::NORMAL);  // <0x41> no longer a byte
    ExpectError(LoadBytes("missingbyte", m.SerializeAsString()), absl::StatusCode::kInvalidArgument,
                Path("missingbyte"), "<0x41> is missing");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_trainer_spec()->set_byte_fallback(false);
    ExpectError(LoadBytes("bytesnofallback", m.SerializeAsString()), absl::StatusCode::kInvalidArgument,
                Path("bytesnofallback"), "byte_fallback is false");
  }
  {
    spm::ModelProto m = ShippedProto();
    m.mutable_normalizer_spec()->set_name("nmt_nfkc");
    m.mutable_normalizer_spec()->set_precompiled_charsmap(std::string("\xff\xff\x00\x00junk", 8));
    ExpectError(LoadBytes("charsmap", m.SerializeAsString()), absl::StatusCode::kInvalidArgument, Path("charsmap"),
                "precompiled_charsmap");
  }
}

TEST(LoadFromSerialized, NamesTheOriginAndHashesTheBytes) {
  const std::string bytes = ReadBytes(kShippedModel);
  auto tok = Tokenizer::LoadFromSerialized(bytes, "<in-memory>");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->digest(), util::Sha256Hex(bytes));
  auto bad = Tokenizer::LoadFromSerialized("junk", "<in-memory>");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("<in-memory>"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace sinkscope::tokenizer

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new sinkscope::tokenizer::Goldens);
  return RUN_ALL_TESTS();
}
