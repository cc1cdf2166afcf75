#!/usr/bin/env bash
# Proves deploy/gpu-check.sh's bare-node path on a Debian 12 machine: a minimal Debian chroot with only what the
# GPU node has (g++, cmake, ninja, python3, and libtorch-dev + python3-torch standing in for the pip torch, with
# SINKSCOPE_TORCH_PYTHON pointing at the chroot's python3 so TorchSelect's pip-style path is used) and NONE of our
# -dev packages; the repo (tracked + untracked-not-ignored files + .gpu-deps, what the GPU tool carries) is copied in
# and gpu-check.sh runs in .deb-prefix mode.
#   --suite bookworm (default): torch 1.13, GCC 12, glibc 2.36: the same base as the .debs.
#   --suite trixie: torch 2.6, GCC 14, CMake 3.31, glibc 2.41, Python 3.13: the engine compiled and tested against a
#     LibTorch 2.x with a newer compiler than the .debs were built with, as on a GPU node (the .debs stay Debian 12's).
#   --torch cuda (trixie only): Debian's CUDA build of torch 2.6 (contrib: python3-torch-cuda, libtorch-cuda-dev, CUDA
#     12 runtime libraries from non-free) instead of the CPU one: sinkscope is built and linked against a CUDA LibTorch
#     (libtorch_cuda.so and libc10_cuda.so kept by --no-as-needed), and its tests run with the CUDA libraries loaded
#     on a machine without a GPU. Debian cannot ship cuDNN (nvidia-cudnn downloads it at install time, and there is
#     no network here beyond Debian's mirror), so the chroot gets a stand-in libcudnn.so.9 that defines every cuDNN
#     function the torch libraries bind to (they are linked with BIND_NOW) and aborts if one is ever called: without
#     a GPU nothing calls cuDNN. The nvidia-cudnn and libcuda1 (driver) dependencies are satisfied by empty packages.
#
# Usage (root): deploy/gpu/chroot-dry-run.sh [--suite bookworm|trixie] [--torch cpu|cuda] [--chroot DIR] [--keep-tree]
#                 [-- extra gpu-check.sh args]
#   --chroot: default $TMPDIR/sinkscope-gpu-chroot (-trixie for trixie, -trixie-cuda with --torch cuda; keep it
#   outside the repo). Idempotent: the
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
TORCH=cpu
while [[ $# -gt 0 ]]; do
  case $1 in
    --chroot) C=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --torch) TORCH=$2; shift 2 ;;
    --keep-tree) KEEP=1; shift ;;
    --) shift; break ;;
    *) echo "chroot-dry-run: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "chroot-dry-run: needs root" >&2; exit 2; }
case $TORCH in  # the python torch package, its LibTorch -dev package, the chroot name suffix
  cpu) PY_TORCH=python3-torch; DEV_TORCH=libtorch-dev; FLAVOUR="" ;;
  cuda) [[ $SUITE == trixie ]] || { echo "chroot-dry-run: --torch cuda needs --suite trixie" >&2; exit 2; }
        PY_TORCH=python3-torch-cuda; DEV_TORCH=libtorch-cuda-dev; FLAVOUR=-cuda ;;
  *) echo "chroot-dry-run: --torch must be cpu or cuda" >&2; exit 2 ;;
esac
case $SUITE in
  bookworm) C=${C:-${TMPDIR:-/tmp}/sinkscope-gpu-chroot} ;;
  trixie) C=${C:-${TMPDIR:-/tmp}/sinkscope-gpu-chroot-trixie$FLAVOUR} ;;
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
  say "installing the node stand-in packages (torch: $TORCH)"
  if [[ $TORCH == cuda ]]; then
    chroot "$C" /bin/bash -c 'set -e
      sed -i "s/^Components: main$/Components: main contrib non-free/" /etc/apt/sources.list.d/*.sources \
        2>/dev/null || true
      [[ -f /etc/apt/sources.list ]] && sed -i "s/ main$/ main contrib non-free/" /etc/apt/sources.list
      # Empty packages for the two dependencies this machine cannot have: cuDNN (a download from NVIDIA at install
      # time) and the driver library (no GPU).
      for p in "nvidia-cudnn 9.99 nvidia-cudnn" "libcuda1 999 libcuda.so.1"; do
        set -- $p; d=/tmp/empty-$1; mkdir -p $d/DEBIAN
        printf "Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: sinkscope dry run\n" "$1" "$2" \
          > $d/DEBIAN/control
        printf "Provides: %s (= %s)\nDescription: empty stand-in (sinkscope chroot dry run)\n" "$3" "$2" \
          >> $d/DEBIAN/control
        dpkg-deb -b $d /tmp/$1.deb >/dev/null && dpkg -i /tmp/$1.deb >/dev/null
      done'
  fi
  chroot "$C" /bin/bash -c 'set -e; export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends g++ cmake ninja-build python3 "$1" python3-numpy \
      libgoogle-glog-dev libgflags-dev ca-certificates ccache >/dev/null
    cd /tmp && apt-get download -q "$2" >/dev/null
    dpkg -i --ignore-depends=libprotobuf-dev,python3-dev "$2"_*.deb >/dev/null' \
    _ "$PY_TORCH" "$DEV_TORCH"
  if [[ $TORCH == cuda ]]; then
    chroot "$C" /bin/bash -c 'set -e
      # The stand-in libcudnn.so.9: every cuDNN symbol the torch libraries need, each aborting if called, under
      # the version node they bind to.
      lib=/usr/lib/x86_64-linux-gnu
      syms=$(for f in $lib/libtorch*.so.* $lib/libc10*.so.* /usr/lib/python3/dist-packages/torch/*.so; do
        [[ -f $f && ! -L $f ]] && nm -D --undefined-only "$f" 2>/dev/null | awk "{print \$2}" | sed "s/@.*//" |
          grep "^cudnn" || true
      done | sort -u)
      [[ -n $syms ]] || { echo "no cuDNN symbols found in the torch libraries" >&2; exit 1; }
      { echo "#include <stdlib.h>"; for s in $syms; do echo "void $s(void) { abort(); }"; done; } > /tmp/cudnn_stub.c
      echo "libcudnn.so.9 { global: *; };" > /tmp/cudnn_stub.map
      gcc -shared -fPIC -o $lib/libcudnn.so.9 -Wl,-soname,libcudnn.so.9 -Wl,--version-script=/tmp/cudnn_stub.map \
        /tmp/cudnn_stub.c
      echo "stand-in libcudnn.so.9: $(echo $syms | wc -w) symbols"
      python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda,
        \"available\", torch.cuda.is_available())"'
  fi
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
if [[ $TORCH == cuda ]]; then  # linked against the CUDA LibTorch, not just built beside it
  loaded=$(chroot "$C" ldd "$IN/build/server/sinkscoped" 2>/dev/null | grep -oE '^\s*lib(torch|c10)[a-z_]*\.so[.0-9]*' |
           tr -d ' \t' | tr '\n' ' ')
  if [[ $loaded == *libtorch_cuda* && $loaded == *libc10_cuda* ]]; then
    say "sinkscoped loads: $loaded"
  else
    say "ERROR: sinkscoped does not load libtorch_cuda and libc10_cuda (loads: ${loaded:-none})"; rc=1
  fi
fi
exit $rc
