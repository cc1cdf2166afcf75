#!/usr/bin/env bash
# Installs dependencies, builds everything and runs the whole test suite through ctest.
# Idempotent; when nothing changed it only re-runs the tests. Exit status non-zero on any failure.
#   deploy/test.sh            # RelWithDebInfo build in build/
#   PRESET=debug deploy/test.sh   # ASan/UBSan build in build-debug/
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-default}
JOBS=${JOBS:-$(nproc)}

deploy/install-deps.sh
cmake --preset "$PRESET" >/dev/null
cmake --build --preset "$PRESET" -j "$JOBS"
ctest --preset "$PRESET" -j "$JOBS" --timeout 900
