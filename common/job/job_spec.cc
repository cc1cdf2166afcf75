#include "common/job/job_spec.h"

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

}  // namespace sinkscope::job
