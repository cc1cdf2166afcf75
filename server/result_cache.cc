#include "server/result_cache.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "absl/strings/str_cat.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/sha256.h"
#include "server/convert.h"

namespace sinkscope::server {

std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream zero_copy(&out);
    google::protobuf::io::CodedOutputStream coded(&zero_copy);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return out;
}

std::string CacheKey(const job::Plan& plan, const std::string& engine_version) {
  util::Sha256 h;
  // Every part is length-prefixed, so that no two different tuples hash the same bytes.
  const auto part = [&h](const std::string& s) {
    h.Update(absl::StrCat(s.size(), ":"));
    h.Update(s);
  };
  part("sinkscope-result-cache-v1");
  part(engine_version);
  for (const job::ModelPlan& m : plan.models) {
    if (!m.handle.model || m.handle.model->weights_digest().empty()) return "";
    part(m.handle.name);
    part(m.handle.model->weights_digest());
    part(m.handle.tokenizer ? m.handle.tokenizer->digest() : "");
    part(m.handle.model->dtype());
    part(m.handle.model->device());
  }
  job::JobSpec spec = plan.spec;
  spec.no_cache = false;  // asks not to be answered from the cache; its result is the same
  part(DeterministicBytes(ToProto(spec, ServerFields{})));
  part(plan.inputs_digest);
  return h.HexDigest();
}

}  // namespace sinkscope::server
