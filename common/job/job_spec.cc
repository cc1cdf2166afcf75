#include "common/job/job_spec.h"

#include "common/util/overloaded.h"

namespace sinkscope::job {

const char* Name(QkvTensor t) {
  switch (t) {
    case QkvTensor::kQ: return "q";
    case QkvTensor::kK: return "k";
    case QkvTensor::kV: return "v";
  }
  return "?";
}

const char* Name(SpikeRule r) {
  switch (r) {
    case SpikeRule::kArgmaxRatio: return "argmax_ratio";
    case SpikeRule::kArgmaxJump: return "argmax_jump";
  }
  return "?";
}

const char* Name(PositionClass p) {
  switch (p) {
    case PositionClass::kBos: return "bos";
    case PositionClass::kRest: return "rest";
    case PositionClass::kAll: return "all";
  }
  return "?";
}

const char* KindName(const AnalysisSpec& a) {
  return std::visit(Overloaded{[](const SinkRateSpec&) { return "sink_rate"; },
                               [](const MassiveValuesSpec&) { return "massive_values"; },
                               [](const ResidualStatsSpec&) { return "residual_stats"; },
                               [](const MatrixEntropySpec&) { return "matrix_entropy"; },
                               [](const PerplexitySpec&) { return "perplexity"; },
                               [](const ActivationStatsSpec&) { return "activation_stats"; }},
                    a);
}

}  // namespace sinkscope::job
