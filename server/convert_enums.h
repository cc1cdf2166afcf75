// Proto enum <-> engine enum: one table per pair, read in both directions (convert_spec.cc, convert_results.cc).
// Internal to convert. A proto UNSPECIFIED (0) value is never listed: on the way in it means "the engine's
// default" or is an error, depending on the field.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/job/job_spec.h"
#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::server::internal {

template <typename P, typename E>
struct EnumPair {
  P proto;
  E engine;
  const char* name;  // for error messages
};

namespace v1 = sinkscope::v1;

inline constexpr EnumPair<v1::QueryRows, job::QueryRows> kQueryRows[] = {
    {v1::QUERY_ROWS_ALL, job::QueryRows::kAll, "ALL"},
    {v1::QUERY_ROWS_EXCLUDE_BOS, job::QueryRows::kExcludeBos, "EXCLUDE_BOS"}};
inline constexpr EnumPair<v1::AttentionSource, job::AttentionSource> kAttentionSources[] = {
    {v1::ATTENTION_SOURCE_MODEL, job::AttentionSource::kModel, "MODEL"},
    {v1::ATTENTION_SOURCE_PRE_ROTARY, job::AttentionSource::kPreRotary, "PRE_ROTARY"}};
inline constexpr EnumPair<v1::QkvTensor, job::QkvTensor> kQkvTensors[] = {
    {v1::QKV_TENSOR_Q, job::QkvTensor::kQ, "Q"},
    {v1::QKV_TENSOR_K, job::QkvTensor::kK, "K"},
    {v1::QKV_TENSOR_V, job::QkvTensor::kV, "V"}};
inline constexpr EnumPair<v1::ThresholdScope, job::ThresholdScope> kScopes[] = {
    {v1::THRESHOLD_SCOPE_LAYER, job::ThresholdScope::kLayer, "LAYER"},
    {v1::THRESHOLD_SCOPE_HEAD, job::ThresholdScope::kHead, "HEAD"}};
inline constexpr EnumPair<v1::PositionClass, job::PositionClass> kPositionClasses[] = {
    {v1::POSITION_CLASS_BOS, job::PositionClass::kBos, "BOS"},
    {v1::POSITION_CLASS_REST, job::PositionClass::kRest, "REST"},
    {v1::POSITION_CLASS_ALL, job::PositionClass::kAll, "ALL"}};
inline constexpr EnumPair<v1::Replacement, job::Replacement> kReplacements[] = {
    {v1::REPLACEMENT_ZERO, job::Replacement::kZero, "ZERO"},
    {v1::REPLACEMENT_MEAN, job::Replacement::kMean, "MEAN"}};
inline constexpr EnumPair<v1::SpikeRule, job::SpikeRule> kSpikeRules[] = {
    {v1::SPIKE_RULE_ARGMAX_RATIO, job::SpikeRule::kArgmaxRatio, "ARGMAX_RATIO"},
    {v1::SPIKE_RULE_ARGMAX_JUMP, job::SpikeRule::kArgmaxJump, "ARGMAX_JUMP"}};
inline constexpr EnumPair<v1::EditOp, job::EditOp> kEditOps[] = {
    {v1::EDIT_OP_ZERO, job::EditOp::kZero, "ZERO"},    {v1::EDIT_OP_SCALE, job::EditOp::kScale, "SCALE"},
    {v1::EDIT_OP_ADD, job::EditOp::kAdd, "ADD"},       {v1::EDIT_OP_MEAN, job::EditOp::kMean, "MEAN"},
    {v1::EDIT_OP_SET, job::EditOp::kSet, "SET"}};

template <typename P, typename E, size_t N>
P EnumToProto(const EnumPair<P, E> (&table)[N], E e) {
  for (const auto& pair : table)
    if (pair.engine == e) return pair.proto;
  return P();
}

enum class Zero { kDefault, kInvalid };

// Converts `p` into *out. UNSPECIFIED leaves *out (the engine's default) with Zero::kDefault; any value not in the
// table is InvalidArgument "FIELD: invalid value N (expected A, B or C)".
template <typename P, typename E, size_t N>
absl::Status EnumFromProto(const EnumPair<P, E> (&table)[N], P p, const std::string& field, E* out,
                           Zero zero = Zero::kDefault) {
  if (p == P() && zero == Zero::kDefault) return absl::OkStatus();
  std::string expected;
  for (size_t i = 0; i < N; ++i) {
    if (table[i].proto == p) {
      *out = table[i].engine;
      return absl::OkStatus();
    }
    absl::StrAppend(&expected, i == 0 ? "" : i + 1 == N ? " or " : ", ", table[i].name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": invalid value ", static_cast<int>(p), " (expected ", expected, ")"));
}

}  // namespace sinkscope::server::internal
