// safetensors reader (see safetensors.h for the format and the validation rules). Torch-free.
#include "common/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/util/file.h"
#include "common/util/sha256.h"
#include "nlohmann/json.hpp"

namespace sinkscope::model {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same limit as the reference implementation

// Element size of every dtype the safetensors spec defines; 0 = not a safetensors dtype.
size_t DtypeSize(const std::string& s, StDtype* kind) {
  *kind = StDtype::kUnsupported;
  if (s == "F32") return *kind = StDtype::kF32, 4;
  if (s == "F16") return *kind = StDtype::kF16, 2;
  if (s == "BF16") return *kind = StDtype::kBF16, 2;
  if (s == "F64" || s == "I64" || s == "U64") return 8;
  if (s == "I32" || s == "U32") return 4;
  if (s == "I16" || s == "U16") return 2;
  if (s == "I8" || s == "U8" || s == "BOOL" || s == "F8_E4M3" || s == "F8_E5M2") return 1;
  return 0;
}

absl::Status Corrupt(const std::string& label, const std::string& msg) {
  return absl::DataLossError(absl::StrCat(label, ": ", msg));
}

}  // namespace

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::vector<StTensor>> ParseSafetensors(const uint8_t* bytes, size_t file_size, const std::string& label,
                                                       std::map<std::string, std::string>* metadata) {
  if (file_size < 8)
    return Corrupt(label, absl::StrCat("file is ", file_size, " bytes, too short for the 8-byte header length"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian u64
  if (n == 0) return Corrupt(label, "header length is 0");
  if (n > kMaxHeaderBytes) return Corrupt(label, absl::StrCat("header length ", n, " exceeds the 100 MiB limit"));
  if (n > file_size - 8)
    return Corrupt(label, absl::StrCat("header length ", n, " runs past the end of the file (", file_size,
                                       " bytes; truncated?)"));
  const uint8_t* data = bytes + 8 + n;
  const uint64_t data_size = file_size - 8 - n;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + n));
  } catch (const json::exception& e) {
    return Corrupt(label, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) return Corrupt(label, "header is not a JSON object");

  std::vector<StTensor> out;
  out.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Corrupt(label, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return Corrupt(label, absl::StrCat("__metadata__.", m.key(), " is not a string"));
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor ", name);
    if (!v.is_object()) return Corrupt(label, absl::StrCat(where, ": entry is not an object"));
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return Corrupt(label, absl::StrCat(where, ": missing or non-string dtype"));
    if (sh == v.end() || !sh->is_array()) return Corrupt(label, absl::StrCat(where, ": missing or non-array shape"));
    if (off == v.end() || !off->is_array() || off->size() != 2)
      return Corrupt(label, absl::StrCat(where, ": data_offsets must be [begin, end]"));
    StTensor t;
    t.name = name;
    t.dtype_str = dt->get<std::string>();
    t.elem_size = DtypeSize(t.dtype_str, &t.dtype);
    if (t.elem_size == 0) return Corrupt(label, absl::StrCat(where, ": unknown dtype \"", t.dtype_str, "\""));
    // numel × elem_size, overflow-checked (each dim < 2^62 and the running product stays < 2^62).
    unsigned __int128 bytes_needed = t.elem_size;
    for (const json& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        return Corrupt(label, absl::StrCat(where, ": shape ", sh->dump(), " has a non-integer or negative dimension"));
      t.shape.push_back(d.get<int64_t>());
      bytes_needed *= static_cast<uint64_t>(t.shape.back());
      if (bytes_needed > (static_cast<unsigned __int128>(1) << 62))
        return Corrupt(label, absl::StrCat(where, ": shape ", sh->dump(), " is impossibly large"));
    }
    for (const json& o : *off)
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
        return Corrupt(label, absl::StrCat(where, ": data_offsets ", off->dump(), " are not non-negative integers"));
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end) return Corrupt(label, absl::StrCat(where, ": data_offsets ", off->dump(), " has begin > end"));
    if (t.end > data_size)
      return Corrupt(label, absl::StrCat(where, ": data_offsets ", off->dump(), " run past the data section (",
                                         data_size, " bytes; truncated file?)"));
    if (static_cast<unsigned __int128>(t.end - t.begin) != bytes_needed)
      return Corrupt(label, absl::StrCat(where, ": shape ", sh->dump(), " × ", t.dtype_str, " needs ",
                                         static_cast<uint64_t>(bytes_needed), " bytes but data_offsets ", off->dump(),
                                         " span ", t.end - t.begin));
    t.data = data + t.begin;
    out.push_back(std::move(t));
  }
  // No two tensors may share bytes.
  std::vector<const StTensor*> by_off;
  for (const auto& t : out)
    if (t.end > t.begin) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](const StTensor* a, const StTensor* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_off.size(); ++i)
    if (by_off[i]->begin < by_off[i - 1]->end)
      return Corrupt(label, absl::StrCat("tensors ", by_off[i - 1]->name, " [", by_off[i - 1]->begin, ", ",
                                         by_off[i - 1]->end, ") and ", by_off[i]->name, " [", by_off[i]->begin, ", ",
                                         by_off[i]->end, ") overlap"));
  return out;
}

absl::StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(e));
    return e == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Corrupt(path, absl::StrCat("file is ", size, " bytes, too short for the 8-byte header length"));
  }
  // Writable private mapping: copy-on-write, never written back. Fall back to read-only if the kernel refuses
  // (e.g. strict overcommit accounting).
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(e)));

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->base_ = static_cast<uint8_t*>(p);
  f->size_ = size;
  auto parsed = ParseSafetensors(f->base_, size, path, &f->metadata_);
  if (!parsed.ok()) return parsed.status();  // f's destructor unmaps
  f->tensors_ = std::move(*parsed);
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

const StTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::shared_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::string& dir) {
  auto ck = std::make_shared<SafetensorsCheckpoint>();
  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string single_path = dir + "/model.safetensors";
  struct stat st {};
  if (::stat(index_path.c_str(), &st) == 0) {
    ck->sharded_ = true;
    absl::StatusOr<std::string> text = util::ReadFile(index_path);
    if (!text.ok()) return text.status();
    json idx;
    try {
      idx = json::parse(*text);
    } catch (const json::exception& e) {
      return Corrupt(index_path, absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      return Corrupt(index_path, "missing \"weight_map\" object");
    const json& wm = idx["weight_map"];
    std::map<std::string, size_t> file_index;  // shard file name -> index into files_
    std::set<std::string> shard_names;
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string())
        return Corrupt(index_path, absl::StrCat("weight_map[\"", it.key(), "\"] is not a string"));
      const std::string fn = it.value().get<std::string>();
      if (fn.empty() || fn.find('/') != std::string::npos || fn == "." || fn == "..")
        return Corrupt(index_path, absl::StrCat("weight_map[\"", it.key(), "\"] = \"", fn,
                                                "\" is not a plain file name in the checkpoint directory"));
      shard_names.insert(fn);
    }
    if (shard_names.empty()) return Corrupt(index_path, "weight_map is empty");
    for (const std::string& fn : shard_names) {  // sorted: deterministic digest order
      auto f = SafetensorsFile::Open(dir + "/" + fn);
      if (!f.ok()) return f.status();
      file_index[fn] = ck->files_.size();
      ck->files_.push_back(std::move(*f));
    }
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      const std::string fn = it.value().get<std::string>();
      size_t fi = file_index[fn];
      const StTensor* t = ck->files_[fi]->Find(it.key());
      if (t == nullptr)
        return Corrupt(index_path, absl::StrCat("weight_map says tensor ", it.key(), " is in ", fn,
                                                ", but that file has no such tensor"));
      ck->where_[it.key()] = {fi, t};
    }
    return ck;
  }
  if (::stat(single_path.c_str(), &st) != 0)
    return absl::NotFoundError(
        absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir));
  auto f = SafetensorsFile::Open(single_path);
  if (!f.ok()) return f.status();
  ck->files_.push_back(std::move(*f));
  for (const StTensor& t : ck->files_[0]->tensors()) ck->where_[t.name] = {0, &t};
  return ck;
}

const StTensor* SafetensorsCheckpoint::Find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : it->second.second;
}

std::shared_ptr<SafetensorsFile> SafetensorsCheckpoint::FileOf(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second.first];
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> v;
  v.reserve(where_.size());
  for (const auto& [k, _] : where_) v.push_back(k);
  return v;
}

std::string SafetensorsCheckpoint::Sha256Hex() const {
  util::Sha256 h;
  constexpr size_t kBlock = 64 << 20;
  for (const auto& f : files_)
    for (size_t off = 0; off < f->size(); off += kBlock) h.Update(f->bytes() + off, std::min(kBlock, f->size() - off));
  return h.HexDigest();
}

}  // namespace sinkscope::model
