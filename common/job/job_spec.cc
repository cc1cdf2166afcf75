#include "common/job/job_spec.h"

#include <array>

#include "common/util/overloaded.h"

namespace sinkscope::job {

// Names indexed by the enum's value (the enums are dense from 0, in the order of their declaration).
const char* Name(QkvTensor t) { return std::array{"q", "k", "v"}[static_cast<size_t>(t)]; }
const char* Name(SpikeRule r) { return std::array{"argmax_ratio", "argmax_jump"}[static_cast<size_t>(r)]; }
const char* Name(PositionClass p) { return std::array{"bos", "rest", "all"}[static_cast<size_t>(p)]; }

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
