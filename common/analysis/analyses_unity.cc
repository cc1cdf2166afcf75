// The analyses' single LibTorch translation unit. Each metric keeps its own file (formula comment + reducer);
// they are compiled together here because every TU that includes ATen costs ~5-15 s on the project's 2-core
// machines (docs/design-notes.md §8). The included .cc files are listed in CMake as HEADER_FILE_ONLY; each uses its own
// *_internal namespace so the unity build cannot collide.
#include "common/analysis/activation_stats.cc"
#include "common/analysis/analysis.cc"
#include "common/analysis/interventions.cc"
#include "common/analysis/massive_values.cc"
#include "common/analysis/matrix_entropy.cc"
#include "common/analysis/perplexity.cc"
#include "common/analysis/residual_stats.cc"
#include "common/analysis/sink_rate.cc"
