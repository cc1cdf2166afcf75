#!/usr/bin/env bash
# Builds sinkscope against a CUDA LibTorch and proves the GPU path in ONE command on a bare, air-gapped GPU node
# (python3 with a pip CUDA torch + transformers, a C++ compiler, CMake, ninja; none of our Debian -dev packages):
#   1. unpacks .gpu-deps/*.deb (deploy/fetch-gpu-deps.sh, run beforehand on Debian 12) into a PRIVATE prefix under
#      the build dir (never into /), rewrites .pc prefixes, repoints dangling -dev symlinks to the node's own
#      libraries, and points CMake/protoc/pkg-config at it; binaries get a DT_RPATH to it (no global LD_LIBRARY_PATH,
#      so the node's python, cmake and compiler never load our Debian libraries); checks that the node's glibc and
#      libstdc++ define every symbol version those libraries need (deploy/gpu/abi_check.py) before building;
#   2. configures with the pip torch (-DSINKSCOPE_TORCH_PYTHON, cmake/TorchSelect.cmake) and builds sinkscoped,
#      sinkscope, sinkscope-probe, engine_tests, analysis_tests, sinkscope-bench with all cores;
#      meanwhile, in the background on the GPU: random 7B-width checkpoints (deploy/gpu/make_checkpoint.py), Hugging
#      Face reference runs (hf_compare.py reference) and the bf16 matmul peak;
#   3. HF comparison: sinkscope-probe tensors and sinkscoped's study metrics vs transformers (RoPE, DroPE, DroPE with
#      q/k norm; float32 and bfloat16);
#   4. engine_tests and analysis_tests with SINKSCOPE_TEST_DEVICE=<device> (beside step 3: neither is timed);
#   5. sinkscoped with a 7B-shaped RoPE+DroPE pair resident (bf16, cuda:0) runs the study's phase suite (phase
#      preset + BOS-MLP ablation + Q/K disruption with 3 controls) over 64 prompts x 512 tokens via the client;
#   6. hf_bench.py: the same work in transformers, the study's way and the best single-pass way;
#   6b. packing: sinkscope-job-bench, the phase suite over the bench prompts cut to 16-64 tokens (weight-bound),
#      one prompt per forward vs all prompts packed into one forward, their attention in equal-length runs or in
#      padded groups (OUT/packing.md, also gpu.md's last section: times, ATen ops per layer, the most frequent ops);
#   7. report: OUT/gpu.md (also bench/results/gpu.md on cuda), OUT/results.json, OUT/gpu-check.log, OUT/logs.tgz.
# Every step has a hard timeout inside a global budget (--budget, default 560 s on cuda: the node gives us ONE
# 10-minute command), steps run most-valuable-first, and the report is rewritten after each step, so a timeout
# still leaves results. Exit status: 0 all checks passed; 1 a check failed or a step failed/timed out; 2 usage or
# setup error.
#
# --device cpu runs the same steps on an ordinary Debian 12 machine with the Debian packages (Debian LibTorch, small
# dimensions, HF steps skipped when transformers is absent), so the script is proven before it meets a GPU;
# --use-deps-prefix forces the .deb prefix mode there (deploy/gpu/chroot-dry-run.sh does that in a bare chroot).
#
# Defaults: cuda = 32 bench layers, 64 x 512 prompts, budget 560 s, --out $OUT (the GPU tool's) or out/gpu-check;
# --quick = at most 4 prompts x 64 tokens (a smoke run). --skip takes step names (tests, compare, bench, hf_bench).
# Usage: deploy/gpu-check.sh [--device cuda|cpu] [--out DIR] [--layers N] [--quick] [--build-dir DIR]
#          [--work DIR] [--use-deps-prefix] [--python PY] [--torch-python PY] [--budget SECONDS] [--jobs N]
#          [--prompts N] [--tokens T] [--skip STEP,...]
# Idempotent: re-running reuses the prefix, the build and the checkpoints when unchanged.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T0=$(date +%s)

ENV_OUT=${OUT:-}  # the GPU tool's run sets OUT: its files come back; default --out to it
DEVICE="" OUT="" LAYERS="" QUICK=0 BUILD_DIR="" WORK="" USE_PREFIX="" PY="" TORCH_PY="" BUDGET="" JOBS="" SKIP=""
N_PROMPTS="" N_TOKENS=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --use-deps-prefix) USE_PREFIX=1; shift ;;
    --no-deps-prefix) USE_PREFIX=0; shift ;;
    --python) PY=$2; shift 2 ;;
    --torch-python) TORCH_PY=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --prompts) N_PROMPTS=$2; shift 2 ;;
    --tokens) N_TOKENS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; usage 2 ;;
  esac
done

die() { echo "gpu-check: ERROR: $*" >&2; exit 2; }
elapsed() { echo $(( $(date +%s) - T0 )); }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }

# ------------------------------------------------------------------------------------------ python and device
# The python with torch (+ numpy): --python, $SINKSCOPE_TORCH_PYTHON, the GPU image's venv, python3 on PATH.
pick_python() {
  local c
  for c in "$PY" "${SINKSCOPE_TORCH_PYTHON:-}" /opt/torch/.venv/bin/python3 "$(command -v python3 || true)" /usr/bin/python3; do
    [[ -n $c && -x $c ]] || continue
    if "$c" -c 'import torch, numpy' >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  return 1
}
PY=$(pick_python) || die "no python3 with torch and numpy found (give --python)"
# One more python start for everything else we need to know (importing a CUDA torch takes seconds).
PYINFO=$("$PY" -c '
import sys, torch
try:
    import transformers, safetensors
    hf = transformers.__version__
except Exception:
    hf = "absent"
print(int(torch.cuda.is_available()), torch.__version__, torch.version.cuda or "none", hf, sys.version.split()[0])
') || die "$PY: cannot import torch"
read -r CUDA_OK TORCH_VERSION TORCH_CUDA HF_VERSION PY_VERSION <<< "$PYINFO"
HF_OK=$([[ $HF_VERSION != absent ]] && echo 1 || echo 0)
if [[ -z $DEVICE ]]; then DEVICE=$([[ $CUDA_OK == 1 ]] && echo cuda || echo cpu); fi
case $DEVICE in
  cuda) [[ $CUDA_OK == 1 ]] || die "--device cuda but torch.cuda.is_available() is false in $PY" ;;
  cpu) ;;
  *) die "--device must be cuda or cpu" ;;
esac

# Defaults per device. cuda: the node's pip torch, .deb prefix, 7B dims, 64 x 512; cpu: Debian's LibTorch and
# packages, small dims, few short prompts.
if [[ $DEVICE == cuda ]]; then
  : "${USE_PREFIX:=1}" "${BUDGET:=560}" "${LAYERS:=32}" "${N_PROMPTS:=64}" "${N_TOKENS:=512}"
  [[ -n $TORCH_PY ]] || TORCH_PY=$PY
  DIMS=7b; DTYPE_BENCH=bfloat16; DEV_SPEC=cuda:0; CMP_LAYERS=2; CMP_T="128,200,64"
  BUILD_DIR=${BUILD_DIR:-$ROOT/build-cuda}
  WORK=${WORK:-/tmp/sinkscope-gpu-check}
else
  : "${USE_PREFIX:=0}" "${BUDGET:=0}" "${LAYERS:=2}" "${N_PROMPTS:=8}" "${N_TOKENS:=64}"
  DIMS=small; DTYPE_BENCH=float32; DEV_SPEC=cpu; CMP_LAYERS=2; CMP_T="40,64,24"
  BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu-cpu}
  WORK=${WORK:-$BUILD_DIR/gpu-check-work}
fi
if [[ $QUICK == 1 ]]; then
  N_PROMPTS=$(( N_PROMPTS < 4 ? N_PROMPTS : 4 )); N_TOKENS=$(( N_TOKENS < 64 ? N_TOKENS : 64 ))
fi
OUT=${OUT:-${ENV_OUT:-$ROOT/out/gpu-check}}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT" "$WORK/logs" "$BUILD_DIR"
OUT=$(cd "$OUT" && pwd); WORK=$(cd "$WORK" && pwd); BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
LOG=$OUT/gpu-check.log
: > "$LOG"
STEPS=$WORK/steps.tsv
: > "$STEPS"
FAILED=0

log() { echo "[gpu-check +$(elapsed)s] $*" | tee -a "$LOG"; }
remaining() { if [[ $BUDGET -gt 0 ]]; then echo $(( BUDGET - $(elapsed) )); else echo 100000; fi; }
# Step functions run under `step ... ||`, where bash ignores `set -e`: each checks its commands' status itself.
# step NAME TIMEOUT CMD...: runs CMD (a function or program) with a hard timeout (capped by the remaining budget)
# into logs/NAME.log, records "name status seconds" and shows the log's tail on failure. CMD runs in its own process
# group (set -m) so a timeout ends everything it started (ninja's compilers, python, a server).
run_group() {  # run_group LIMIT LOGFILE CMD...: returns CMD's status, or 124 after a timeout
  local limit=$1 logf=$2; shift 2
  set -m
  ( set +m; "$@" ) > "$logf" 2>&1 &
  local pid=$! rc=""
  set +m
  local deadline=$(( $(date +%s) + limit ))
  while kill -0 "$pid" 2>/dev/null; do
    if (( $(date +%s) >= deadline )); then
      kill -TERM -- "-$pid" 2>/dev/null || true; sleep 3; kill -KILL -- "-$pid" 2>/dev/null || true
      rc=124; break
    fi
    sleep 0.5
  done
  if [[ -z $rc ]]; then rc=0; wait "$pid" || rc=$?; else wait "$pid" 2>/dev/null || true; fi
  return "$rc"
}
step() {
  local name=$1 limit=$2; shift 2
  local rem; rem=$(remaining)
  if skipped "$name"; then echo -e "$name\tskipped\t0" >> "$STEPS"; log "step $name: skipped (--skip)"; return 0; fi
  if (( rem < 15 )); then
    echo -e "$name\tno-time\t0" >> "$STEPS"; log "step $name: NOT RUN (budget spent)"; FAILED=1; return 1
  fi
  # No budget (--device cpu default): step limits x10 (a 2-core machine builds for many minutes), still finite.
  if [[ $BUDGET -le 0 ]]; then limit=$(( limit * 10 )); fi
  (( limit > rem - 5 )) && limit=$(( rem - 5 ))
  local t rc=0 dt status=ok
  t=$(date +%s)
  log "step $name: start (timeout ${limit}s)"
  run_group "$limit" "$WORK/logs/$name.log" "$@" || rc=$?
  dt=$(( $(date +%s) - t ))
  if [[ $rc == 124 ]]; then status=TIMEOUT; elif [[ $rc == 3 ]]; then status=skipped; elif [[ $rc != 0 ]]; then status="FAIL(rc=$rc)"; fi
  echo -e "$name\t$status\t$dt" >> "$STEPS"
  log "step $name: $status in ${dt}s"
  if [[ $status != ok && $status != skipped ]]; then
    FAILED=1
    tail -n 25 "$WORK/logs/$name.log" | sed 's/^/    | /' | tee -a "$LOG"
    return 1
  fi
  if [[ $status == skipped ]]; then tail -n 2 "$WORK/logs/$name.log" | sed 's/^/    | /' | tee -a "$LOG"; fi
  return 0
}

# report: OUT/gpu.md + results.json from whatever the work dir holds so far (called after every step and on exit
# after a failed setup step), and OUT/logs.tgz.
report() {
  "$PY" "$ROOT/deploy/gpu/report.py" --work "$WORK" --out "$OUT" --device "$DEVICE" --layers "$LAYERS" \
    --prompts "$N_PROMPTS" --tokens "$N_TOKENS" --dims "$DIMS" --dtype "$DTYPE_BENCH" --elapsed "$(elapsed)" \
    >> "$LOG" 2>&1 || log "report.py failed (see $LOG)"
  (cd "$WORK" && tar czf "$OUT/logs.tgz" logs env.txt steps.tsv cmp/*.json cmp/events.jsonl bench/*.json bench/*.txt \
     bench/events.jsonl hf/*.json peak.json 2>/dev/null) || true
}

log "device $DEVICE; python $PY; torch $TORCH_VERSION; out $OUT; work $WORK;" \
    "build $BUILD_DIR; budget ${BUDGET}s; jobs $JOBS; deps prefix $USE_PREFIX"
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -srm)"; echo "nproc: $(nproc)"
  echo "python: $PY ($PY_VERSION)"; echo "torch: $TORCH_VERSION (CUDA $TORCH_CUDA)"; echo "transformers: $HF_VERSION"
  echo "cxx: $(${CXX:-c++} --version 2>/dev/null | head -1)"; echo "cmake: $(cmake --version | head -1)"
  echo "ninja: $(ninja --version 2>/dev/null || echo absent)"; echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo absent)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; fi
  grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null || true
} > "$WORK/env.txt" 2>&1
sed 's/^/    /' "$WORK/env.txt" | tee -a "$LOG"

# ------------------------------------------------------------------------------ background: checkpoints + HF
# Everything that needs only python: runs on the GPU while the CPUs compile. Order = order of use.
CK=$WORK/ckpt
BENCH_CK=$CK
if [[ $DEVICE == cuda && -d /dev/shm ]]; then
  # The 13.5 GB bench checkpoint in RAM (tmpfs): written and mmap'd at memory speed, no disk.
  free_gb=$(df -Pk /dev/shm | awk 'NR==2 {print int($4/1048576)}')
  if (( free_gb > 40 )); then BENCH_CK=/dev/shm/sinkscope-gpu-check; fi
fi
mkdir -p "$CK" "$BENCH_CK" "$WORK/hf" "$WORK/cmp"
CMP_MODELS=(rope nope qk_norm_nope)
CMP_BACKEND=$([[ $HF_OK == 1 ]] && echo hf || echo reference)
CMP_DTYPES=(float32 bfloat16)
# Prompts: token ids, generated (BOS = 1, then uniform ids in [3, vocab)); comparison prompts of lengths CMP_T.
"$PY" - "$WORK" "$DIMS" "$N_PROMPTS" "$N_TOKENS" "$CMP_T" <<'EOF'
import json, sys, torch
work, dims, n, t, cmp_t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
V = 32000 if dims == "7b" else 4096
g = torch.Generator().manual_seed(1234)
def make(lengths):
    return [[1] + torch.randint(3, V, (T - 1,), generator=g).tolist() for T in lengths]
json.dump(make([int(x) for x in cmp_t.split(",")]), open(f"{work}/cmp_prompts.json", "w"))
json.dump(make([t] * n), open(f"{work}/bench_prompts.json", "w"))
EOF

background_prep() {
  set +e
  local dev=$([[ $DEVICE == cuda ]] && echo cuda || echo cpu) rc=0
  for att in "${CMP_MODELS[@]}"; do
    local from=()
    [[ $att == nope ]] && from=(--weights-from "$CK/cmp-rope")
    "$PY" "$ROOT/deploy/gpu/make_checkpoint.py" --out "$CK/cmp-$att" --dims "$DIMS" --layers "$CMP_LAYERS" \
      --attention "$att" --device "$dev" --seed 1 "${from[@]}" || rc=1
  done
  # Without transformers (a CPU dry run) the same pipeline runs against the independent python reference.
  [[ $HF_OK == 1 ]] || echo "hf_compare: transformers not importable by $PY: comparing with tests/reference instead"
  local jobs=()
  for att in "${CMP_MODELS[@]}"; do for dt in "${CMP_DTYPES[@]}"; do
    jobs+=(--job "$CK/cmp-$att:$dt:$WORK/hf/cmp-$att-$dt")
  done; done
  "$PY" "$ROOT/deploy/gpu/hf_compare.py" reference --backend "$CMP_BACKEND" --device "$dev" \
    --prompts "$WORK/cmp_prompts.json" "${jobs[@]}" || rc=1
  touch "$WORK/.cmp_ready"
  "$PY" "$ROOT/deploy/gpu/make_checkpoint.py" --out "$BENCH_CK/bench-rope" --dims "$DIMS" --layers "$LAYERS" \
    --attention rope --device "$dev" --seed 2 || rc=1
  "$PY" "$ROOT/deploy/gpu/make_checkpoint.py" --out "$BENCH_CK/bench-drope" --dims "$DIMS" --layers "$LAYERS" \
    --attention nope --device "$dev" --seed 2 --weights-from "$BENCH_CK/bench-rope" || rc=1
  [[ $DEVICE == cuda ]] && { "$PY" "$ROOT/deploy/gpu/hf_bench.py" peak --out "$WORK/peak.json" || rc=1; }
  touch "$WORK/.bench_ready"
  return $rc
}
rm -f "$WORK/.cmp_ready" "$WORK/.bench_ready"
log "background: checkpoints ($DIMS; compare L=$CMP_LAYERS, bench L=$LAYERS in $BENCH_CK), HF references, peak"
set -m  # own process group, so cleanup can end the python jobs too
( set +m; background_prep > "$WORK/logs/background.log" 2>&1; echo $? > "$WORK/background.rc" ) &
BG_PID=$!
set +m
SERVER_PID=""
cleanup() {  # (every command guarded: under set -e a failing kill in an EXIT trap would change the exit status)
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [[ -n ${BG_PID:-} ]]; then kill -TERM -- "-$BG_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# ------------------------------------------------------------------------------------------- deps prefix
PREFIX=$BUILD_DIR/deps-prefix
WRAP=$PREFIX/wrap
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
setup_prefix() {  # unpack (when .gpu-deps changed), then check the node's libc/libstdc++ can run what it holds
  unpack_prefix || return 1
  "$PY" "$ROOT/deploy/gpu/abi_check.py" "$PREFIX"
}
unpack_prefix() {
  local debs=("$ROOT"/.gpu-deps/*.deb)
  [[ -e ${debs[0]} ]] || { echo "no .gpu-deps/*.deb: run deploy/fetch-gpu-deps.sh on a Debian 12 machine and carry .gpu-deps"; return 1; }
  local stamp; stamp=$(cat "$ROOT/.gpu-deps/SHA256SUMS" 2>/dev/null | sha256sum | cut -c1-16)
  if [[ -f $PREFIX/.stamp && $(cat "$PREFIX/.stamp") == "$stamp" ]]; then echo "prefix up to date"; return 0; fi
  rm -rf "$PREFIX"; mkdir -p "$PREFIX" "$WRAP"
  if command -v dpkg >/dev/null; then
    for d in "${debs[@]}"; do dpkg -x "$d" "$PREFIX" || return 1; done
  else
    "$PY" "$ROOT/deploy/gpu/unpack_debs.py" "$PREFIX" "${debs[@]}" || return 1
  fi
  # pkg-config files: prefix=/usr (and a few absolute -I/-L) -> the private prefix. Once per unpack (the stamp).
  find "$PREFIX/usr" -name '*.pc' -print0 | xargs -0 -r sed -i -E \
    -e "s#^([A-Za-z_]+=)/usr(/|\$)#\\1$PREFIX/usr\\2#" -e "s#-([IL])/usr/#-\\1$PREFIX/usr/#g"
  # -dev symlinks into runtimes we deliberately do not ship (libz.so -> libz.so.1.2.13): the node's own library.
  local l tgt so sys
  while IFS= read -r -d '' l; do
    tgt=$(readlink "$l"); so=$(basename "$tgt" | sed -E 's/^(lib[^.]+\.so\.[0-9]+).*/\1/')
    sys=$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | awk -v s="$so" '$1 == s && /x86-64/ {print $NF; exit}')
    [[ -z $sys ]] && for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64; do [[ -e $d/$so ]] && { sys=$d/$so; break; }; done
    if [[ -n $sys ]]; then ln -sfn "$sys" "$l"; echo "relinked $(basename "$l") -> $sys"
    else echo "WARNING: $(basename "$l") -> $tgt: no $so on this system"; fi
  done < <(find "$LIBDIR" -maxdepth 1 -xtype l -name 'lib*.so' -print0)
  # protoc, grpc_cpp_plugin (exec'd by protoc) and pkgconf need our libraries: wrappers set LD_LIBRARY_PATH for
  # them alone.
  for tool in protoc pkg-config; do
    local real=$PREFIX/usr/bin/$tool
    [[ $tool == pkg-config ]] && real=$PREFIX/usr/bin/pkgconf
    cat > "$WRAP/$tool" <<EOW
#!/bin/sh
export LD_LIBRARY_PATH="$LIBDIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PKG_CONFIG_LIBDIR="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig:$PREFIX/usr/lib/pkgconfig"
exec "$real" "\$@"
EOW
    chmod +x "$WRAP/$tool"
  done
  "$WRAP/protoc" --version && "$WRAP/pkg-config" --modversion re2 grpc++ protobuf || return 1
  echo "$stamp" > "$PREFIX/.stamp"
  du -sh "$PREFIX"
}

CMAKE_ARGS=(-DSINKSCOPE_BUILD_TESTS=ON -DSINKSCOPE_BUILD_BENCH=ON "-DSINKSCOPE_PYTHON=$PY")
# A new build dir: Ninja, Release (no -g: faster to build and link). An existing one keeps its generator and build
# type, so --build-dir can reuse a RelWithDebInfo tree without rebuilding everything.
if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
  CMAKE_ARGS+=(-DCMAKE_BUILD_TYPE=Release)
  if command -v ninja >/dev/null; then CMAKE_ARGS+=(-G Ninja); else CMAKE_ARGS+=(-G "Unix Makefiles"); fi
fi
# CMake >= 4 refuses policy versions < 3.5 unless told otherwise; some Debian config files still name 2.6...3.2x.
export CMAKE_POLICY_VERSION_MINIMUM=3.5
[[ -n $TORCH_PY ]] && CMAKE_ARGS+=("-DSINKSCOPE_TORCH_PYTHON=$TORCH_PY")
CXXFLAGS_EXTRA=""
if ${CXX:-c++} -dumpfullversion 2>/dev/null | grep -qE '^(1[3-9]|[2-9][0-9])\.'; then
  # GCC >= 13 no longer includes <cstdint> transitively; Debian 12's headers (built with GCC 12) may rely on it.
  CXXFLAGS_EXTRA="-include cstdint"
fi
if [[ $USE_PREFIX == 1 ]]; then
  if ! step deps 120 setup_prefix; then log "cannot continue without the dependency prefix"; report; exit 1; fi
  # CMAKE_LIBRARY_ARCHITECTURE: find_* search <prefix>/lib/x86_64-linux-gnu even with a non-Debian compiler.
  # -isystem .../include/x86_64-linux-gnu: OpenSSL's and curl's multiarch headers (Debian's compiler only knows
  # /usr/include/x86_64-linux-gnu). DT_RPATH (--disable-new-dtags) also covers the libraries' own dependencies.
  CMAKE_ARGS+=("-DCMAKE_PREFIX_PATH=$PREFIX/usr" -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu
               "-DProtobuf_PROTOC_EXECUTABLE=$WRAP/protoc" "-DPKG_CONFIG_EXECUTABLE=$WRAP/pkg-config"
               "-DCMAKE_CXX_FLAGS=-isystem $PREFIX/usr/include/x86_64-linux-gnu $CXXFLAGS_EXTRA"
               "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,$LIBDIR"
               "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,$LIBDIR")
  export PATH=$WRAP:$PATH
elif [[ -n $CXXFLAGS_EXTRA ]]; then
  CMAKE_ARGS+=("-DCMAKE_CXX_FLAGS=$CXXFLAGS_EXTRA")
fi

# Every target and its binary. The first three are essential: without them nothing can be checked.
TARGETS=(sinkscoped sinkscope sinkscope-probe engine_tests analysis_tests sinkscope-bench sinkscope-job-bench)
declare -A TARGET_PATH=([sinkscoped]=server/sinkscoped [sinkscope]=client/sinkscope
  [sinkscope-probe]=tools/probe/sinkscope-probe [engine_tests]=tests/engine/engine_tests
  [analysis_tests]=tests/analysis/analysis_tests [sinkscope-bench]=bench/sinkscope-bench
  [sinkscope-job-bench]=bench/sinkscope-job-bench)
configure() { cmake -S "$ROOT" -B "$BUILD_DIR" "${CMAKE_ARGS[@]}"; }
build() {
  # The two background python jobs share the machine; give the compiler all cores anyway (they are GPU-bound).
  # Keep going past a failing file, so that one broken test or bench does not cost the node's one run.
  # $WORK/build_failed lists the targets that did not build when the run can go on without them; it is absent
  # after a success and after a failure that ends the run.
  local keep=-k rc=0 t failed=()
  grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD_DIR/CMakeCache.txt" && keep="-k 0"
  rm -f "$WORK/build_failed"
  # shellcheck disable=SC2086
  cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}" -- $keep || rc=1
  if [[ $rc != 0 ]]; then
    # Which targets did not build: each is asked again on its own (no work when it is up to date). A binary left
    # from an earlier build is removed, so that no later step runs old code.
    for t in "${TARGETS[@]}"; do
      cmake --build "$BUILD_DIR" -j "$JOBS" --target "$t" > /dev/null 2>&1 && continue
      failed+=("$t"); rm -f "$BUILD_DIR/${TARGET_PATH[$t]}"
    done
    echo "== targets that did not build: ${failed[*]}"
    for t in "${failed[@]}"; do [[ $t == sinkscoped || $t == sinkscope || $t == sinkscope-probe ]] && return 1; done
    [[ ${#failed[@]} -gt 0 ]] && printf '%s\n' "${failed[@]}" > "$WORK/build_failed"
  fi
  if [[ $USE_PREFIX == 1 ]]; then
    # Every library of the server must come from the prefix, torch (and torch's own dependencies) or the base
    # system (libc, libstdc++, ...), never from a path that only exists on the build machine.
    local torch_cpu
    torch_cpu=$(ldd "$BUILD_DIR/server/sinkscoped" | awk '$1 ~ /^libtorch_cpu\.so/ {print $3}')
    echo "== sinkscoped's libraries from neither the prefix nor torch's closure ($torch_cpu):"
    comm -23 <(ldd "$BUILD_DIR/server/sinkscoped" | awk '$2 == "=>" {print $1 " " $3}' | sort) \
             <(ldd "$torch_cpu" | awk '$2 == "=>" {print $1 " " $3}' | sort) | grep -v -e "$PREFIX" -e "/torch/lib" || true
    if ldd "$BUILD_DIR/server/sinkscoped" "$BUILD_DIR/client/sinkscope" | grep "not found"; then
      rm -f "$WORK/build_failed"; return 1
    fi
  fi
  if [[ $DEVICE == cuda ]]; then
    # Loaded at start, directly (a pip wheel's torch/lib/libtorch_cuda.so) or through libtorch.so (Debian's layout):
    # the CUDA kernels register themselves when libtorch_cuda loads.
    echo "== NEEDED torch libraries of sinkscoped:"; readelf -d "$BUILD_DIR/server/sinkscoped" | grep -E "torch|c10"
    local loaded  # (whole output first: grep -q closing the pipe early would fail it under pipefail)
    loaded=$(ldd "$BUILD_DIR/server/sinkscoped" 2>&1 || true)
    grep -q "libtorch_cuda\.so" <<< "$loaded" ||
      { echo "libtorch_cuda.so is not loaded by sinkscoped"; rm -f "$WORK/build_failed"; return 1; }
  fi
  return $rc
}
step configure 180 configure || { log "configure failed; see $WORK/logs/configure.log"; report; exit 1; }
if ! step build 420 build; then
  # A timeout, a missing library or an essential target that did not build ends the run; a test or bench that did
  # not build fails only the steps that use it.
  if [[ ! -s $WORK/build_failed ]]; then log "build failed"; report; exit 1; fi
  log "build failed for $(tr '\n' ' ' < "$WORK/build_failed"): continuing with the targets that built"
fi
BIN_SERVER=$BUILD_DIR/server/sinkscoped
BIN_CLI=$BUILD_DIR/client/sinkscope
BIN_PROBE=$BUILD_DIR/tools/probe/sinkscope-probe

# ------------------------------------------------------------------------------------------------ server
# start_server CONFIG NAME: sinkscoped on 127.0.0.1:<free port>, waits until every model is loaded.
start_server() {
  local config=$1 name=$2 pf=$WORK/$2.port
  rm -f "$pf"
  "$BIN_SERVER" --config "$config" --listen 127.0.0.1:0 --port_file "$pf" > "$WORK/logs/server-$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do [[ -s $pf ]] && break; sleep 0.1; done
  [[ -s $pf ]] || { echo "server did not start:"; tail -20 "$WORK/logs/server-$name.log"; return 1; }
  export SINKSCOPE_SERVER=127.0.0.1:$(cat "$pf")
  "$BIN_CLI" health --wait "${3:-300}" > /dev/null || { echo "server not healthy:"; tail -20 "$WORK/logs/server-$name.log"; return 1; }
}
stop_server() {
  if [[ -n $SERVER_PID ]]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}
ids_args() {  # --ids a,b,c ... for every prompt of a JSON file
  "$PY" -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    print("--ids")
    print(",".join(map(str, p)))' "$1"
}

wait_for() {  # wait_for FILE SECONDS
  local i
  for i in $(seq 1 "$2"); do [[ -e $1 ]] && return 0; kill -0 "$BG_PID" 2>/dev/null || { [[ -e $1 ]]; return; }; sleep 1; done
  return 1
}

# ------------------------------------------------------------------------------------- 3. HF comparison
compare_all() {
  wait_for "$WORK/.cmp_ready" "$(( $(remaining) - 30 ))" || { echo "comparison checkpoints not ready"; return 1; }
  local rc=0 cfg=$WORK/cmp-models.yaml
  {
    echo "models:"
    for att in "${CMP_MODELS[@]}"; do for dt in "${CMP_DTYPES[@]}"; do
      echo "  - {name: cmp-$att-$dt, path: $CK/cmp-$att, dtype: $dt, device: $DEV_SPEC}"
    done; done
    echo "datasets_dir: $ROOT/models/datasets"
  } > "$cfg"
  # Engine tensors first (no server needed).
  for att in "${CMP_MODELS[@]}"; do for dt in "${CMP_DTYPES[@]}"; do
    "$BIN_PROBE" --model "$CK/cmp-$att" --dtype "$dt" --device "$DEV_SPEC" --prompts "$WORK/cmp_prompts.json" \
      --attn-chunk 64 --out "$WORK/cmp/probe-$att-$dt.safetensors" || rc=1
  done; done
  # Study metrics from the server, one job over all six models.
  start_server "$cfg" cmp || return 1
  local names
  names=$(for att in "${CMP_MODELS[@]}"; do for dt in "${CMP_DTYPES[@]}"; do printf 'cmp-%s-%s,' "$att" "$dt"; done; done | sed 's/,$//')
  mapfile -t IDS < <(ids_args "$WORK/cmp_prompts.json")
  mapfile -t FLAGS < <("$PY" "$ROOT/deploy/gpu/hf_compare.py" flags | tr ' ' '\n')
  "$BIN_CLI" -f json run -m "$names" "${IDS[@]}" "${FLAGS[@]}" > "$WORK/cmp/events.jsonl" || rc=1
  stop_server
  [[ $HF_OK == 1 ]] || echo "NOTE: transformers is not installed in $PY: the reference side is tests/reference (python)"
  for att in "${CMP_MODELS[@]}"; do for dt in "${CMP_DTYPES[@]}"; do
    local ref32=()
    [[ $dt != float32 ]] && ref32=(--ref32 "$WORK/hf/cmp-$att-float32")
    "$PY" "$ROOT/deploy/gpu/hf_compare.py" compare --ref "$WORK/hf/cmp-$att-$dt" "${ref32[@]}" \
      --probe "$WORK/cmp/probe-$att-$dt.safetensors" --events "$WORK/cmp/events.jsonl" --name "cmp-$att-$dt" \
      --dtype "$dt" --out "$WORK/cmp/result-$att-$dt.json" || rc=1
  done; done
  return $rc
}

# ---------------------------------------------------------------------------------------------- 4. tests
run_tests() {
  local rc=0
  export SINKSCOPE_TEST_DEVICE=$DEVICE
  (cd "$BUILD_DIR" && ./tests/engine/engine_tests --gtest_brief=1) || rc=1
  (cd "$BUILD_DIR" && ./tests/analysis/analysis_tests --gtest_brief=1) || rc=1
  return $rc
}

# -------------------------------------------------------------------------------------- 5. server bench
bench_server() {
  wait_for "$WORK/.bench_ready" "$(( $(remaining) - 30 ))" || { echo "bench checkpoints not ready"; return 1; }
  local cfg=$WORK/bench-models.yaml
  cat > "$cfg" <<EOF
models:
  - {name: bench-rope, path: $BENCH_CK/bench-rope, dtype: $DTYPE_BENCH, device: $DEV_SPEC, digest: false}
  - {name: bench-drope, path: $BENCH_CK/bench-drope, dtype: $DTYPE_BENCH, device: $DEV_SPEC, digest: false}
datasets_dir: $ROOT/models/datasets
limits: {max_prompts_per_job: 1000, pack_tokens: $(( N_PROMPTS * N_TOKENS ))}
EOF
  local t=$(date +%s)
  start_server "$cfg" bench 400 || return 1
  echo "load_seconds $(( $(date +%s) - t ))" > "$WORK/bench/server_load.txt"
  "$BIN_CLI" -f json models > "$WORK/bench/models.json" || true
  local smi_pid=""
  if command -v nvidia-smi >/dev/null; then
    # Memory, and how busy the device is (utilization.gpu: share of time some kernel ran) while the job runs, of
    # the GPU that cuda:0 is (the first of CUDA_VISIBLE_DEVICES, an index or a UUID, as nvidia-smi -i takes both).
    local smi_gpu=${CUDA_VISIBLE_DEVICES:-0}
    smi_gpu=${smi_gpu%%,*}
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -i "${smi_gpu:-0}" -lms 200 \
      > "$WORK/bench/smi.txt" 2>/dev/null &
    smi_pid=$!
  fi
  mapfile -t IDS < <(ids_args "$WORK/bench_prompts.json")
  local t1 t2 rc=0
  t1=$(date +%s%N)
  "$BIN_CLI" -f json run -m bench-rope,bench-drope "${IDS[@]}" --phase --qk-disruption --control-seeds 42,43,44 \
    > "$WORK/bench/events.jsonl" || rc=1
  t2=$(date +%s%N)
  if [[ -n $smi_pid ]]; then kill "$smi_pid" 2>/dev/null || true; fi
  echo "client_ms $(( (t2 - t1) / 1000000 ))" >> "$WORK/bench/server_load.txt"
  stop_server
  return $rc
}

# ------------------------------------------------------------------------------------------ 6. HF bench
bench_hf() {
  [[ $HF_OK == 1 ]] || { echo "hf_bench: SKIPPED: transformers is not installed in $PY"; return 3; }
  local rem=$(( $(remaining) - 40 )) maxp=$N_PROMPTS
  # The study way takes ~11 forwards per prompt per model; keep it inside the budget by timing fewer prompts.
  if [[ $DEVICE == cuda && $BUDGET -gt 0 ]]; then
    if (( rem < 120 )); then maxp=4; elif (( rem < 200 )); then maxp=8; elif (( rem < 300 )); then maxp=16; fi
  fi
  "$PY" "$ROOT/deploy/gpu/hf_bench.py" run --rope "$BENCH_CK/bench-rope" --drope "$BENCH_CK/bench-drope" \
    --prompts "$WORK/bench_prompts.json" --max-prompts "$maxp" --dtype "$DTYPE_BENCH" --out "$WORK/bench/hf.json"
}

# Packing on the device: the phase suite in-process (sinkscope-job-bench) over the bench prompts cut to lengths
# spread over 16-64 tokens (as the study's short texts are), where a forward is bound by reading the weights: one
# prompt per forward vs all prompts packed in one forward, whose attention runs in equal-length runs (one batch per
# distinct length) or in groups padded to their longest prompt (what auto picks on a GPU).
bench_packing() {
  wait_for "$WORK/.bench_ready" "$(( $(remaining) - 30 ))" || { echo "bench checkpoints not ready"; return 1; }
  "$BUILD_DIR/bench/sinkscope-job-bench" --models="$BENCH_CK/bench-rope,$BENCH_CK/bench-drope" --device="$DEV_SPEC" \
    --dtype="$DTYPE_BENCH" --ids="$WORK/bench_prompts.json" --prompts="$N_PROMPTS" \
    --min-tokens=16 --max-tokens=64 --attention=equal,padded --budgets="0,$(( N_PROMPTS * 64 ))" --suite=phase \
    --repeats=1 --threads="$JOBS" --out="$WORK/bench" --name=packing || return 1
  cat "$WORK/bench/packing.md"
  cp "$WORK/bench/packing.md" "$OUT/packing.md"
}

bench_smoke() {  # sinkscope-bench (CPU forward benchmark) builds and runs; results stay in the work dir
  "$BUILD_DIR/bench/sinkscope-bench" --layers=1 --lengths=64 --repeats=1 --dtypes=float32 --out="$WORK/bench/cpu"
}

mkdir -p "$WORK/bench"
# The unit tests (CPU python references + small GPU work) run beside the comparison (GPU + server): both are
# short, neither is timed, and the budget has no room to run them one after the other.
( step tests 150 run_tests ) &
TESTS_PID=$!
step compare 240 compare_all || true
wait "$TESTS_PID" || true
report
step bench 300 bench_server || true; report
step hf_bench 240 bench_hf || true; report
step packing 90 bench_packing || true; report
step bench_smoke 60 bench_smoke || true
if ! wait_for "$WORK/.bench_ready" 1 || [[ $(cat "$WORK/background.rc" 2>/dev/null || echo 1) != 0 ]]; then
  log "background preparation failed or unfinished: see logs/background.log"; FAILED=1
fi
# A step run in a subshell cannot set FAILED: the steps table is the record.
if awk -F'\t' '$2 != "ok" && $2 != "skipped" {bad = 1} END {exit !bad}' "$STEPS"; then FAILED=1; fi
report
if [[ $DEVICE == cuda && -s $OUT/gpu.md ]]; then cp "$OUT/gpu.md" "$ROOT/bench/results/gpu.md"; fi
log "done in $(elapsed)s: $([[ $FAILED == 0 ]] && echo 'all checks passed' || echo 'FAILURES (see above)')"
exit $FAILED
