#!/usr/bin/env bash
# Installs every build, run and test dependency of sinkscope from Debian 12 packages.
# Idempotent: when every package is already installed it does nothing (no apt-get update, no network).
# Usage: deploy/install-deps.sh [--check]   (--check: exit 1 if something is missing, install nothing)
set -euo pipefail

PACKAGES=(
  # toolchain
  g++ cmake ninja-build ccache pkg-config git
  # engine
  libtorch-dev libopenblas0-pthread   # openblas: without it fp32 matmul is ~30x slower (docs/design-notes.md §4)
  # RPC and contract
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  # libraries
  libabsl-dev libssl-dev libspdlog-dev prometheus-cpp-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libsqlite3-dev
  libcpp-httplib-dev                  # /metrics endpoint
  # tests
  libgtest-dev libgmock-dev
  # independent numerical references used by tests (python3-torch shares libtorch's kernels but not our code)
  python3 python3-torch python3-numpy python3-sentencepiece sentencepiece
  # client: figures (sinkscope plot, run --plot), test PNGs (zlib), TLS test certificates (openssl)
  gnuplot-nox zlib1g-dev openssl
  # python client (python/): grpcio 1.51 and protobuf runtimes (stubs come from protoc + grpc_python_plugin of
  # protobuf-compiler-grpc at build time; Debian's python3-grpc-tools is gRPC 1.14, too old), DataFrames, the
  # matplotlib example
  python3-grpcio python3-protobuf python3-pandas python3-matplotlib
  # process helpers used by demo/test scripts
  procps curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "install-deps: missing: ${missing[*]}"
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages (${missing[*]}); run as root or: sudo $0" >&2
  exit 1
fi
echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's libtorch links the reference BLAS by default; make sure OpenBLAS (pthread) is the selected alternative.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-pthread | head -1 || true)
  [[ -n "$target" ]] && update-alternatives --set "$alt" "$target" >/dev/null
done
echo "install-deps: done"
