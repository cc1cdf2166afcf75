#!/usr/bin/env bash
# Proves deploy/gpu-check.sh's bare-node path on a Debian 12 machine: a minimal Debian chroot with only what the
# GPU node has (g++, cmake, ninja, python3, and libtorch-dev + python3-torch standing in for the pip torch, with
# SINKSCOPE_TORCH_PYTHON pointing at the chroot's python3 so TorchSelect's pip-style path is used) and NONE of our
# -dev packages; the repo (tracked + untracked-not-ignored files + .gpu-deps, what the GPU tool carries) is copied in
# and gpu-check.sh runs in .deb-prefix mode.
#   --suite bookworm (default): torch 1.13, GCC 12, glibc 2.36: the same base as the .debs.
#   --suite trixie: torch 2.6, GCC 14, CMake 3.31, glibc 2.41, Python 3.13: the engine compiled and tested against a
#     LibTorch 2.x with a newer compiler than the .debs were built with, as on a GPU node (the .debs stay Debian 12's).
#
# Usage (root): deploy/gpu/chroot-dry-run.sh [--suite bookworm|trixie] [--chroot DIR] [--keep-tree]
#                 [-- extra gpu-check.sh args]
#   --chroot: default $TMPDIR/sinkscope-gpu-chroot (-trixie for trixie; keep it outside the repo). Idempotent: the
#   chroot, its build dir and its ccache survive between runs (ccache is the one extra: it only speeds up re-runs).
#   --keep-tree: do not re-copy the repo, only deploy/ (iterating on the scripts without rebuilding).
# libtorch-dev Depends on libprotobuf-dev (and python3-dev); installing it would put protobuf headers in /usr and
# defeat the test, so it is installed with dpkg --ignore-depends; glog/gflags -dev are real Debian-torch header
# dependencies (c10 is built with C10_USE_GLOG), not ours.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
C=""
KEEP=0
SUITE=bookworm
while [[ $# -gt 0 ]]; do
  case $1 in
    --chroot) C=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --keep-tree) KEEP=1; shift ;;
    --) shift; break ;;
    *) echo "chroot-dry-run: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "chroot-dry-run: needs root" >&2; exit 2; }
case $SUITE in
  bookworm) C=${C:-${TMPDIR:-/tmp}/sinkscope-gpu-chroot} ;;
  trixie) C=${C:-${TMPDIR:-/tmp}/sinkscope-gpu-chroot-trixie} ;;
  *) echo "chroot-dry-run: --suite must be bookworm or trixie" >&2; exit 2 ;;
esac
T0=$(date +%s)
say() { echo "[chroot-dry-run +$(( $(date +%s) - T0 ))s] $*"; }

MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if [[ ! -x $C/usr/bin/python3 || ! -f $C/.sinkscope-ready ]]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  [[ -x $C/bin/bash ]] || { say "debootstrap minbase $SUITE from $MIRROR"; debootstrap --variant=minbase "$SUITE" "$C" "$MIRROR"; }
fi
for m in proc sys dev dev/pts; do
  mountpoint -q "$C/$m" && continue
  case $m in proc) mount -t proc proc "$C/proc" ;; *) mount --bind "/$m" "$C/$m" ;; esac
done
if [[ ! -f $C/.sinkscope-ready ]]; then
  cp /etc/resolv.conf "$C/etc/resolv.conf"
  say "installing the node stand-in packages"
  chroot "$C" /bin/bash -c 'set -e; export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ cmake ninja-build python3 python3-torch python3-numpy \
      libgoogle-glog-dev libgflags-dev ca-certificates ccache >/dev/null
    cd /tmp && apt-get download -q libtorch-dev >/dev/null
    dpkg -i --ignore-depends=libprotobuf-dev,python3-dev libtorch-dev_*.deb >/dev/null'
  touch "$C/.sinkscope-ready"
fi
# None of our -dev packages may be there.
if chroot "$C" dpkg -l | awk '/^ii/ {print $2}' | grep -E '^(libprotobuf-dev|libgrpc\+\+-dev|libabsl-dev|libspdlog-dev|libfmt-dev|libssl-dev|libsqlite3-dev|libgtest-dev|nlohmann-json3-dev|libyaml-cpp-dev|prometheus-cpp-dev|pkgconf|pkg-config)(:|$)'; then
  echo "chroot-dry-run: the chroot has project -dev packages (listed above): not a bare node" >&2; exit 2
fi

[[ -d $ROOT/.gpu-deps ]] || { echo "run deploy/fetch-gpu-deps.sh first" >&2; exit 2; }
# Inside the chroot everything lives under $IN (the tree, the build, the work and report directories).
IN=/srv/sinkscope-dry-run
if [[ $KEEP == 1 && -d $C$IN/sinkscope ]]; then
  say "refreshing deploy/ only in $C$IN/sinkscope"
  (cd "$ROOT" && tar -cf - deploy) | tar -C "$C$IN/sinkscope" -xf -
else
  # What the GPU tool carries: tracked + untracked-not-ignored files, plus .gpu-deps. tar keeps mtimes, so an
  # unchanged file does not rebuild.
  say "copying the working tree (+ .gpu-deps) to $C$IN/sinkscope"
  rm -rf "$C$IN/sinkscope"; mkdir -p "$C$IN/sinkscope"
  (cd "$ROOT" && { git ls-files -co --exclude-standard; find .gpu-deps -maxdepth 1 -type f; } | sort -u |
    while IFS= read -r f; do [[ -e $f ]] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -C "$C$IN/sinkscope" -xf -
fi
say "tree: $(du -sh "$C$IN/sinkscope" | cut -f1)"

say "running gpu-check.sh --device cpu --quick --use-deps-prefix inside the chroot"
rc=0
chroot "$C" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  /bin/bash -c 'in=$0; cd "$in"/sinkscope && deploy/gpu-check.sh --device cpu --layers 2 --quick --use-deps-prefix \
    --torch-python /usr/bin/python3 --python /usr/bin/python3 --build-dir "$in"/build --work "$in"/gpu-work \
    --out "$in"/out "$@"' "$IN" "$@" || rc=$?
say "gpu-check.sh exited $rc; report: $C$IN/out/gpu.md, log: $C$IN/out/gpu-check.log"
exit $rc
