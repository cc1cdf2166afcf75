#!/usr/bin/env bash
# Proves the deploy story on this machine, end to end, with podman (no image registry, no GPU, no cluster):
#   prereqs   podman, buildah, runc, catatonit, debootstrap, python3-yaml, docker-compose, podman-compose (apt)
#   base      deploy/local-base.sh: Debian 12 base image from debootstrap (skipped when present)
#   build     deploy/Dockerfile -> localhost/sinkscope:cpu (reuses the host's ccache when there is one)
#   image     what is in it: size, user 10001, HEALTHCHECK, volumes, no compiler or headers, complete library closure,
#             the server's flags (--state_dir, --tokens_file, --log_format, ...) and the default command
#   run       the image with its DEFAULT command, hardened (read-only root, no capabilities), tokens as a secret,
#             ports published on 127.0.0.1; from the HOST client: health, models, one RoPE-vs-DroPE phase job,
#             /metrics, the container's own health check; tokens enforced (no token and a wrong one refused with
#             exit 3, UNAUTHENTICATED); a token added to the file and SIGHUP (podman kill -s HUP) -> accepted, same
#             process; a finished job kept across a container restart (state volume: same record and summary);
#             every line of `podman logs` is JSON (--log_format=json); graceful stop on SIGTERM (exit 0)
#   k8s       deploy/k8s/*: rendered with kustomize (kubectl), every object validated against the Kubernetes API
#             schema (npm kubernetes-models), then the Deployment run with `podman kube play` (CPU image, the tiny
#             pair in the models volume, no GPU) and queried from the host (tokens enforced, JSON log)
#   compose   deploy/compose.yaml: schema check (docker-compose 1.29) and `podman-compose up` with the CPU image,
#             the tiny pair as the models directory and a tokens secret; queried from the host (tokens
#             enforced, JSON log); `down`
#   systemd   deploy/sinkscoped.service booted under systemd in a container: active, health and a job, tokens
#             enforced, `systemctl reload` (SIGHUP: tokens re-read, same process, still serving), restart after a
#             crash (kill -9) with the finished job still there, clean stop; `systemd-analyze verify` and `security`
#   cuda      deploy/Dockerfile.cuda built and run on the GPU (tiny pair on cuda:0) -- only on a GPU node with the
#             NVIDIA Container Toolkit (CDI) and .torch-wheels/; elsewhere reported as skipped, with the reason
# Takes minutes (the first build ~10-20 min on 2 cores; later runs ~3 min): NOT part of ctest. Run as root.
# Idempotent: leftovers of an earlier run (names sinkscope-ct-*) are removed first and at exit; images are kept.
# Prints a table of steps with their times and the image sizes at the end. Exit status 0 only if every step passed.
#
# Usage: deploy/container-test.sh [--skip STEP,...] [--keep] [--jobs N] [--no-host-ccache] [--rebuild-base]
#          [--context tree|head]
#   --context head  build the image from the last commit (git archive HEAD) with the working tree's deploy/ files
#                   and .dockerignore on top: for a tree that others are editing (default: the working tree)
#   --keep   leave the last containers running for inspection (cleanup is then: deploy/container-test.sh --clean)
#   --clean  remove every sinkscope-ct-* container, pod, volume and secret, and exit
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
T_START=$(date +%s)

SKIP="" KEEP=0 JOBS=$(nproc) HOST_CCACHE=1 REBUILD_BASE=0 CLEAN_ONLY=0 CONTEXT=tree
while [[ $# -gt 0 ]]; do
  case $1 in
    --skip) SKIP=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    --no-host-ccache) HOST_CCACHE=0; shift ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --clean) CLEAN_ONLY=1; shift ;;
    --context) CONTEXT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "container-test: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done

BASE=localhost/sinkscope-base:bookworm
IMAGE=localhost/sinkscope:cpu
P=sinkscope-ct                           # prefix of everything this script creates (containers, volumes, ...)
WORK=/var/tmp/$P                         # logs, generated manifests, the extracted client
VALIDATOR_DIR=/var/cache/sinkscope-deploy/validate   # npm packages for the schema checks (outside the repo)
# Podman on these VMs needs runc and explicit ulimits (deploy/containers.conf); an operator's own setting wins.
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

die() { echo "container-test: ERROR: $*" >&2; exit 2; }
log() { echo "[container-test +$(( $(date +%s) - T_START ))s] $*"; }
skipped() { [[ ",$SKIP," == *",$1,"* ]]; }
[[ $(id -u) -eq 0 ]] || die "run as root (rootful podman, debootstrap, apt)"

# ------------------------------------------------------------------------------------------------- cleanup
cleanup_all() {
  local c
  if command -v podman >/dev/null; then
    # Containers (with their anonymous volumes: the image declares two), then kube play pods, named volumes,
    # secrets, compose's network.
    for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep "^$P" || true); do podman rm -f -v -t 5 "$c" >/dev/null 2>&1 || true; done
    for c in $(podman pod ls --format '{{.Name}}' 2>/dev/null | grep "^$P-" || true); do podman pod rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(podman volume ls --format '{{.Name}}' 2>/dev/null | grep "^$P" || true); do podman volume rm -f "$c" >/dev/null 2>&1 || true; done
    for c in $(podman secret ls --format '{{.Name}}' 2>/dev/null | grep "^$P" || true); do podman secret rm "$c" >/dev/null 2>&1 || true; done
    podman network rm -f "${P}_default" >/dev/null 2>&1 || true
  fi
}
if [[ $CLEAN_ONLY == 1 ]]; then cleanup_all; echo "container-test: removed every $P-* object"; exit 0; fi
rm -rf "$WORK"; mkdir -p "$WORK/logs"
# Unnamed volumes that appear during the run (the image's two VOLUMEs for each container, kube play's emptyDirs)
# are this run's: removed at exit along with the named ones. Volumes that existed before are never touched.
podman volume ls -q 2>/dev/null | sort > "$WORK/volumes.start" || true
on_exit() {
  local rc=$?
  if [[ $KEEP == 0 ]]; then
    cleanup_all
    podman volume ls -q 2>/dev/null | sort | comm -13 "$WORK/volumes.start" - | xargs -r podman volume rm >/dev/null 2>&1 || true
  else
    log "--keep: containers left running ($0 --clean removes them)"
  fi
  exit "$rc"
}
trap on_exit EXIT

# ---------------------------------------------------------------------------------------- step bookkeeping
# step NAME FUNCTION: runs it with its output in $WORK/logs/NAME.log (and shown), records status and seconds.
# A failed step does not stop the others unless it is marked critical (what follows cannot run without it).
declare -a ROWS=()
FAILED=0
# A step that cannot run here returns this (not 3: that is the client's "unavailable/unauthenticated" exit status,
# which must count as a failure).
SKIP_RC=77
step() {
  local name=$1 fn=$2 critical=${3:-} t rc=0 status dt
  if skipped "$name"; then ROWS+=("$name|skipped|0|--skip"); log "step $name: skipped"; return 0; fi
  log "step $name: start"
  t=$(date +%s)
  set +e
  ( set -euo pipefail; "$fn" ) 2>&1 | tee "$WORK/logs/$name.log" | sed -u 's/^/    | /'
  rc=${PIPESTATUS[0]}
  set -e
  dt=$(( $(date +%s) - t ))
  case $rc in 0) status=ok ;; "$SKIP_RC") status=skipped ;; *) status="FAIL(rc=$rc)"; FAILED=1 ;; esac
  ROWS+=("$name|$status|$dt|$(cat "$WORK/notes.$name" 2>/dev/null | tr '\n' ' ' || true)")
  log "step $name: $status in ${dt}s"
  if [[ $status == FAIL* && $critical == critical ]]; then summary; exit 1; fi
}
note() { echo "$*" >> "$WORK/notes.$CURRENT"; echo "NOTE: $*"; }   # a line for the summary table
summary() {
  echo
  echo "container-test: summary ($(( $(date +%s) - T_START ))s in all)"
  printf '  %-9s %-12s %6s  %s\n' step status seconds notes
  local r name status dt notes
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name status dt notes <<< "$r"
    printf '  %-9s %-12s %6s  %s\n' "$name" "$status" "$dt" "$notes"
  done
  if podman image exists "$IMAGE" 2>/dev/null; then
    echo "  images: $(podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sinkscope(-base)?:' | paste -sd ';' | sed 's/;/; /g')"
  fi
}

# Helpers shared by the checks.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The client on the HOST: the image's own binary copied out (it links only Debian 12 libraries, which this host
# has); if the host lacks one, the same binary runs in a container on the host network.
CLI_BIN=$WORK/sinkscope
cli() {
  if [[ -x $CLI_BIN ]] && ! ldd "$CLI_BIN" | grep 'not found' >/dev/null; then "$CLI_BIN" "$@"
  else podman run --rm --network host -e SINKSCOPE_SERVER -e SINKSCOPE_TOKEN --entrypoint /usr/local/bin/sinkscope "$IMAGE" "$@"; fi
}
# Whether the server binary in the image has a flag (its --helpfull, saved by the image step).
server_has_flag() { grep -qE -- "--$1[ (=]" "$WORK/server-flags.txt"; }
# A token and the tokens file that lists it (format of docs/operations.md): given to every server started here.
new_token() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
make_tokens() {
  TOKEN=$(new_token)
  local digest; digest=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
  printf 'tokens:\n  - principal: container-test\n    role: admin\n    sha256: "%s"\n' "$digest" > "$WORK/tokens.yaml"
  chmod 0644 "$WORK/tokens.yaml"
  export SINKSCOPE_TOKEN=$TOKEN
}
# The server enforces the tokens file: no token and an unknown token are refused (exit 3, UNAUTHENTICATED, the
# client's "not authenticated" message); health stays open (probes and the HEALTHCHECK use it without a token).
check_auth() {
  local out rc=0
  out=$( (unset SINKSCOPE_TOKEN; cli models) 2>&1 ) || rc=$?
  echo "no token:    exit $rc: $out"
  [[ $rc == 3 && $out == *"not authenticated"*"code 16"* ]] || { echo "a request without a token was not refused"; return 1; }
  rc=0; out=$( (export SINKSCOPE_TOKEN=$(new_token); cli models) 2>&1 ) || rc=$?
  echo "wrong token: exit $rc: $out"
  [[ $rc == 3 && $out == *"not authenticated"*"code 16"* ]] || { echo "a request with a wrong token was not refused"; return 1; }
  rc=0; out=$( (unset SINKSCOPE_TOKEN; cli health) 2>&1 ) || rc=$?
  echo "health without a token: exit $rc: $out"
  [[ $rc == 0 ]] || { echo "health needs no token, but failed"; return 1; }
}
# Every line the server wrote (`podman logs NAME`) is one JSON object {ts, level, msg, ...} (--log_format=json);
# the other arguments must each have a line: a msg substring, or a job id (a job transition line for that job).
check_json_logs() {
  local name=$1; shift
  podman logs "$name" > "$WORK/$name.log" 2>&1
  python3 - "$WORK/$name.log" "$@" <<'PY'
import json, sys
path, wanted = sys.argv[1], sys.argv[2:]
lines = [l for l in open(path, encoding="utf-8", errors="replace").read().splitlines() if l.strip()]
objs, bad = [], []
for l in lines:
    try:
        o = json.loads(l)
        if not isinstance(o, dict) or not {"ts", "level", "msg"} <= o.keys(): raise ValueError("fields")
        objs.append(o)
    except ValueError:
        bad.append(l)
print(f"log: {len(lines)} lines, {len(objs)} JSON objects with ts/level/msg, {len(bad)} other")
for l in bad[:5]: print("  not JSON:", l[:200])
missing = []
for w in wanted:
    if w.startswith("j-"):
        hit = [o for o in objs if o.get("event") == "job" and o.get("job") == w]
    else:
        hit = [o for o in objs if w in o["msg"]]
    if hit: print("  " + json.dumps(hit[-1])[:300])
    else: missing.append(w)
for w in missing: print("  no JSON line for:", w)
sys.exit(1 if bad or missing or not objs else 0)
PY
}
# health -> models -> tokens enforced -> one job -> metrics against SINKSCOPE_SERVER; METRICS_URL optional.
# Sets JOB_ID and JOB_SECONDS.
query_server() {
  local t0; t0=$(date +%s)
  cli health --wait 180 || { echo "not SERVING within 180 s"; return 1; }
  echo "SERVING after $(( $(date +%s) - t0 ))s"
  cli models | tee "$WORK/models.out"
  for m in tiny-rope tiny-drope; do
    grep -E "^ *$m\b.*READY" "$WORK/models.out" >/dev/null || { echo "model $m not READY"; return 1; }
  done
  check_auth || return 1   # (errexit does not apply in a function called as `query_server || ...`)
  t0=$(date +%s)
  cli -q run -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts 4 --max-tokens 64 --phase \
      > "$WORK/job.out" 2> "$WORK/job.err" || { tail -20 "$WORK/job.out" "$WORK/job.err"; echo "job failed"; return 1; }
  JOB_SECONDS=$(( $(date +%s) - t0 ))
  JOB_ID=$(cat "$WORK/job.out" "$WORK/job.err" | grep -oE '^job j-[0-9a-f]{16} accepted' | sed -n '1s/^job \(j-[0-9a-f]*\).*/\1/p')
  [[ -n $JOB_ID ]] || { echo "no 'job j-... accepted' line"; return 1; }
  cat "$WORK/job.err"
  head -5 "$WORK/job.out"; echo "    ... ($(wc -l < "$WORK/job.out") lines)"; tail -4 "$WORK/job.out"
  echo "phase job ${JOB_ID:-?} (2 models x 4 prompts x 64 tokens) answered in ${JOB_SECONDS}s"
  if [[ -n ${METRICS_URL:-} ]]; then
    curl -fsS "$METRICS_URL" > "$WORK/metrics.out" || { echo "no /metrics at $METRICS_URL"; return 1; }
    grep -E '^sinkscope_jobs_total\{outcome="succeeded"\} [1-9]' "$WORK/metrics.out" \
      || { echo "metrics: no succeeded job counted"; grep '^sinkscope_jobs_total' "$WORK/metrics.out"; return 1; }
  fi
}

# ================================================================================================== steps
CURRENT=""
do_prereqs() {
  local pkgs=(podman buildah runc catatonit debootstrap python3-yaml docker-compose podman-compose uidmap curl) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep '^install ok installed$' >/dev/null || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # kubectl: only its built-in kustomize is used (offline); node/npm: the schema validators.
  for p in kubectl node npm; do command -v "$p" >/dev/null || echo "WARNING: $p not found (the k8s step will say what it could not do)"; done
  podman --version; buildah --version; runc --version | sed -n 1p; docker-compose version --short 2>/dev/null || true
}

do_base() {
  if [[ $REBUILD_BASE == 1 ]]; then deploy/local-base.sh --force --tag "$BASE"; else deploy/local-base.sh --tag "$BASE"; fi
}

do_build() {
  local rev; rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  [[ $CONTEXT == head ]] || git diff --quiet HEAD 2>/dev/null || rev+=-dirty
  local args=(--format docker -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE" --build-arg "JOBS=$JOBS" --build-arg "REVISION=$rev")
  local cc=${CCACHE_DIR:-$HOME/.cache/ccache}
  if [[ $HOST_CCACHE == 1 ]]; then
    # Same compiler and headers as this host (both Debian 12): the host's cache turns most compiles into hits.
    mkdir -p "$cc"; args+=(-v "$cc:/host-ccache" --build-arg CCACHE_DIR=/host-ccache)
  fi
  local ctx=.
  case $CONTEXT in
    tree) ;;
    head)
      # A consistent source snapshot: the commit, plus this checkout's deploy files (the ones under test).
      ctx=$WORK/context; mkdir -p "$ctx"
      git archive HEAD | tar -x -C "$ctx"
      cp -a deploy/. "$ctx/deploy/"; cp .dockerignore "$ctx/"
      echo "context: HEAD $(git rev-parse --short HEAD) + working-tree deploy/ -> $ctx"
      note "context HEAD $(git rev-parse --short HEAD)"
      ;;
    *) echo "--context must be tree or head"; return 2 ;;
  esac
  podman build "${args[@]}" -f "$ctx/deploy/Dockerfile" "$ctx" 2>&1 | grep -vE '^(Getting image source|Copying (blob|config)|Writing manifest|Storing signatures)'
}

do_image() {
  local size cfg
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  echo "image $IMAGE: $(( size / 1000000 )) MB (base $(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 )) MB)"
  note "cpu image $(( size / 1000000 )) MB"
  cfg=$(podman image inspect --format '{{.Config.User}}|{{json .Config.Healthcheck}}|{{json .Config.Volumes}}|{{json .Config.ExposedPorts}}' "$IMAGE")
  echo "user|healthcheck|volumes|ports: $cfg"
  [[ $cfg == 10001:10001\|* ]] || { echo "image does not run as 10001"; return 1; }
  [[ $cfg == *'"Test":["CMD","/usr/local/bin/sinkscope","health"]'* ]] || { echo "no HEALTHCHECK in the image config"; return 1; }
  [[ $cfg == *'/etc/sinkscope'*'/var/lib/sinkscope'* ]] || { echo "config/state volumes missing"; return 1; }
  # Slim: no toolchain, no headers, no package lists; every library the binaries need resolves.
  podman run --rm --entrypoint /bin/sh "$IMAGE" -c '
    set -e
    for f in /usr/bin/g++ /usr/bin/cmake /usr/include/torch /usr/include/grpc++ /usr/lib/x86_64-linux-gnu/libtorch_cpu.so; do
      [ ! -e "$f" ] || { echo "runtime image contains $f"; exit 1; }
    done
    ! ldd /usr/local/bin/sinkscoped /usr/local/bin/sinkscope | grep "not found"
    echo "runtime libraries: $(grep -c . /usr/local/lib/sinkscope/MANIFEST) copied ($(du -sh /usr/local/lib/sinkscope | cut -f1)), binaries $(du -ch /usr/local/bin/sinkscope* | tail -1 | cut -f1)"
    id'
  podman run --rm --entrypoint /usr/local/bin/sinkscoped "$IMAGE" --helpfull > "$WORK/server-flags.txt" 2>&1 || true
  # The flags the images, compose, the Deployment and the unit pass: a server without them is the wrong one.
  local f lack=()
  for f in state_dir tokens_file log_format tls_cert insecure_allow_remote metrics_listen; do
    server_has_flag "$f" || lack+=("--$f")
  done
  [[ ${#lack[@]} -eq 0 ]] || { echo "the server in the image lacks ${lack[*]}"; return 1; }
  echo "server flags: --state_dir --tokens_file --log_format --tls_cert --insecure_allow_remote --metrics_listen present"
  podman image inspect --format '{{json .Config.Cmd}}' "$IMAGE" | tee "$WORK/cmd.json"
  grep -q -- '--log_format=json' "$WORK/cmd.json" || { echo "default command without --log_format=json"; return 1; }
  if grep -q -- 'undefok' "$WORK/cmd.json"; then echo "default command still has --undefok"; return 1; fi
  # The client, copied out for use on the host.
  local c; c=$(podman create "$IMAGE"); podman cp "$c:/usr/local/bin/sinkscope" "$CLI_BIN"; podman rm -v "$c" >/dev/null
}

do_run() {
  make_tokens
  # The tokens file readable by the image's user only, bind-mounted where the default command looks for it.
  # (Not `podman run --secret`: with --read-only, podman 4.3 mounts secrets before the /run tmpfs and fails.)
  chown 10001:10001 "$WORK/tokens.yaml"; chmod 0400 "$WORK/tokens.yaml"
  podman volume create "$P-state" >/dev/null
  local gport mport name=$P-server
  gport=$(free_port); mport=$(free_port)
  # The image's default command; hardened as compose and Kubernetes run it. Ports on loopback only.
  podman run -d --name "$name" \
    -p "127.0.0.1:$gport:50051" -p "127.0.0.1:$mport:9464" \
    -v "$P-state:/var/lib/sinkscope" \
    -v "$WORK/tokens.yaml:/run/secrets/sinkscope-tokens:ro" \
    --read-only --cap-drop=ALL --security-opt=no-new-privileges \
    "$IMAGE" >/dev/null
  export SINKSCOPE_SERVER=127.0.0.1:$gport METRICS_URL=http://127.0.0.1:$mport/metrics
  echo "server container $name on $SINKSCOPE_SERVER (metrics $METRICS_URL)"
  query_server || { podman logs --tail 30 "$name"; return 1; }
  note "job ${JOB_SECONDS}s"
  # The container's own HEALTHCHECK (the same client, inside), and exec use of the client.
  podman healthcheck run "$name" && echo "podman healthcheck: healthy"
  podman exec -e SINKSCOPE_TOKEN "$name" sinkscope datasets | sed -n 1,3p
  [[ $(podman exec "$name" id -u) == 10001 ]] || { echo "server not running as uid 10001"; return 1; }
  podman exec "$name" sh -c 'touch /var/lib/sinkscope/.w && rm /var/lib/sinkscope/.w' || { echo "state volume not writable by uid 10001"; return 1; }
  local phase_id=$JOB_ID
  # Token rotation without a restart: a new token appended to the mounted file (same inode, so the container sees
  # it) is refused until SIGHUP, then accepted; the process stays the same and keeps serving.
  local tok2 rc=0 pid0 pid1 out
  tok2=$(new_token)
  printf '  - principal: container-test-user\n    role: user\n    sha256: "%s"\n' \
    "$(printf %s "$tok2" | sha256sum | cut -d' ' -f1)" >> "$WORK/tokens.yaml"
  out=$( (export SINKSCOPE_TOKEN=$tok2; cli models) 2>&1 ) || rc=$?
  [[ $rc == 3 ]] || { echo "a token not yet loaded was accepted (exit $rc): $out"; return 1; }
  pid0=$(podman inspect --format '{{.State.Pid}}' "$name")
  podman kill -s HUP "$name" >/dev/null
  sleep 2
  pid1=$(podman inspect --format '{{.State.Pid}}' "$name")
  [[ $(podman inspect --format '{{.State.Running}}' "$name") == true && $pid1 == "$pid0" ]] \
    || { echo "SIGHUP: the server did not keep running (pid $pid0 -> $pid1)"; podman logs --tail 10 "$name"; return 1; }
  (export SINKSCOPE_TOKEN=$tok2; cli models >/dev/null) || { echo "the new token is refused after SIGHUP"; return 1; }
  echo "SIGHUP: same process (pid $pid0), the token added to the file is accepted after the reload"
  note "SIGHUP: token added, same pid"
  # A finished job across a container restart (the state volume, --state_dir): the same record and summary.
  local id t0
  id=$(cli submit -m tiny-rope --dataset brown-heldout --max-prompts 2 --sink-rate)
  cli watch "$id" >/dev/null
  cli -f json get "$id" > "$WORK/job-before.json"
  t0=$(date +%s); podman restart -t 30 "$name" >/dev/null; cli health --wait 120 >/dev/null
  local restart_s=$(( $(date +%s) - t0 ))
  echo "restarted and SERVING in ${restart_s}s"
  cli -f json get "$id" > "$WORK/job-after.json" || { echo "job $id lost across a restart"; return 1; }
  cli get "$id" | sed -n 1,8p
  python3 - "$WORK/job-before.json" "$WORK/job-after.json" <<'PY' || return 1
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
same = a["summary"] == b["summary"]
print(f"job {a['id']}: before {a['state']}, after {b['state']}; summary {'identical' if same else 'DIFFERENT'};"
      f" finished_at {a.get('finished_at')} / {b.get('finished_at')}")
ok = a["state"] == b["state"] == "JOB_STATE_SUCCEEDED" and same and a.get("finished_at") == b.get("finished_at")
sys.exit(0 if ok and a["summary"].get("models") else 1)
PY
  (export SINKSCOPE_TOKEN=$tok2; cli models >/dev/null) || { echo "the rotated token is refused after the restart"; return 1; }
  note "restart: job kept (SUCCEEDED, same summary), SERVING in ${restart_s}s"
  # Graceful stop: SIGTERM -> exit 0 within the grace period.
  t0=$(date +%s); podman stop -t 30 "$name" >/dev/null
  local code; code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  echo "stopped in $(( $(date +%s) - t0 ))s, exit code $code"; podman logs --tail 3 "$name" 2>&1
  [[ $code == 0 ]] || { echo "unclean exit"; return 1; }
  note "stop exit $code in $(( $(date +%s) - t0 ))s"
  # The log of both runs: JSON lines only, with the reload, both jobs, SIGTERM.
  check_json_logs "$name" "auth: reloaded" "received SIGTERM" ${phase_id:+"$phase_id"} "$id" \
    || { echo "podman logs: not the JSON log expected"; return 1; }
  note "podman logs: JSON"
}

# The validator: every object of a YAML stream against the Kubernetes OpenAPI schema (npm kubernetes-models,
# generated from the API's schema; a typo'd field or a wrong type fails), kinds unknown to it are an error.
k8s_validate() {
  command -v node >/dev/null && command -v npm >/dev/null || { echo "node/npm missing: schema check impossible"; return "$SKIP_RC"; }
  mkdir -p "$VALIDATOR_DIR"
  if [[ ! -f $VALIDATOR_DIR/node_modules/kubernetes-models/package.json || ! -f $VALIDATOR_DIR/node_modules/yaml/package.json ]]; then
    (cd "$VALIDATOR_DIR" && { [[ -f package.json ]] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund --loglevel=error kubernetes-models@5.1.0 yaml@2 >/dev/null) \
      || { echo "npm install of the validator failed"; return 1; }
  fi
  cat > "$VALIDATOR_DIR/validate.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
const text = readFileSync(process.argv[2], "utf8");
let bad = 0, n = 0;
for (const doc of parseAllDocuments(text)) {
  if (doc.errors.length) { console.log("YAML error:", doc.errors[0].message); bad++; continue; }
  const obj = doc.toJS();
  if (!obj) continue;
  n++;
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : [null, obj.apiVersion];
  const path = `kubernetes-models/${group ? group + "/" : ""}${version}/${obj.kind}`;
  let Model;
  try { Model = (await import(path))[obj.kind]; } catch (e) { console.log(`${obj.kind} ${obj.apiVersion}: no schema (${path})`); bad++; continue; }
  try { new Model(obj).validate(); console.log(`ok   ${obj.kind}/${obj.metadata.name}`); }
  catch (e) { console.log(`FAIL ${obj.kind}/${obj.metadata.name}: ${e.message}`); bad++; }
}
console.log(`${n} objects, ${bad} invalid`);
process.exit(bad ? 1 : 0);
JS
  (cd "$VALIDATOR_DIR" && node validate.mjs "$1")
}

do_k8s() {
  # 1. Render the kustomization (kubectl's built-in kustomize, offline) and validate every object.
  if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/k8s > "$WORK/k8s-rendered.yaml"
  else
    echo "kubectl missing: validating the files without kustomize"
    for f in deploy/k8s/*.yaml; do [[ $f == */kustomization.yaml ]] || { cat "$f"; echo "---"; }; done > "$WORK/k8s-rendered.yaml"
  fi
  k8s_validate "$WORK/k8s-rendered.yaml"
  note "$(grep -c '^kind:' "$WORK/k8s-rendered.yaml") objects schema-valid"
  # 2. Run the Deployment with podman kube play: the manifests as written, with what only a cluster has swapped
  # for local stand-ins (scripted below, so nothing else changes): the CPU image, no GPU, the tiny pair in the
  # models volume (a podman volume standing in for the PVC), host ports on loopback, one replica.
  make_tokens
  local gport mport; gport=$(free_port); mport=$(free_port)
  podman volume create "$P-models" >/dev/null
  cp -a models/tiny-rope models/tiny-drope "$(podman volume inspect --format '{{.Mountpoint}}' "$P-models")/"
  # The tokens: the Secret's content, or (podman < 4.4, below) a directory standing in for it, readable by uid 10001.
  mkdir -p "$WORK/k8s-secret"; install -o 10001 -g 10001 -m 0400 "$WORK/tokens.yaml" "$WORK/k8s-secret/tokens.yaml"
  python3 - "$WORK/k8s-local.yaml" "$IMAGE" "$P" "$gport" "$mport" "$WORK/k8s-secret" \
      "$(podman version --format '{{.Client.Version}}')" <<'PY'
import base64, sys, yaml
out, image, prefix, gport, mport, secret_dir, podman_version = sys.argv[1:]
docs = {}
for f in ("configmap", "secret", "deployment"):
    docs[f] = yaml.safe_load(open(f"deploy/k8s/{f}.yaml"))
cm, sec, dep = docs["configmap"], docs["secret"], docs["deployment"]
cfg = yaml.safe_load(cm["data"]["sinkscoped.yaml"])
cfg["models"] = [dict(name="tiny-rope", path="/models/tiny-rope", dtype="float32", device="cpu"),
                 dict(name="tiny-drope", path="/models/tiny-drope", dtype="float32", device="cpu")]
cm["data"]["sinkscoped.yaml"] = yaml.safe_dump(cfg, sort_keys=False)
# The test's tokens instead of the placeholders. podman before 4.4 cannot put a Secret's text into the mounted file:
# it ignores `stringData` and writes `data` still base64-encoded (podman issue 16625, fixed in 4.4 by PR 16631), so
# there a hostPath directory with the same file stands in for the Secret volume (the Secret object itself is
# schema-checked above). podman >= 4.4 gets the Secret, as a cluster would.
text = open(f"{secret_dir}/tokens.yaml").read()
old_podman = tuple(int(x) for x in podman_version.split(".")[:2]) < (4, 4)
sec["data"] = {"tokens.yaml": base64.b64encode(text.encode()).decode()}
del sec["stringData"]
if old_podman:
    del docs["secret"]
spec = dep["spec"]; spec["replicas"] = 1
pod = spec["template"]["spec"]
pod.pop("tolerations", None); pod.pop("affinity", None)
c = pod["containers"][0]
c["image"] = image
c["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
for p in c["ports"]:
    p["hostIP"] = "127.0.0.1"; p["hostPort"] = int(gport if p["name"] == "grpc" else mport)
for v in pod["volumes"]:
    if "persistentVolumeClaim" in v:
        v["persistentVolumeClaim"]["claimName"] = f"{prefix}-models"
for d in docs.values():
    d["metadata"]["name"] = f"{prefix}-" + d["metadata"]["name"]
for v in pod["volumes"]:
    if "configMap" in v: v["configMap"]["name"] = cm["metadata"]["name"]
    if "secret" in v and old_podman:
        del v["secret"]
        v["hostPath"] = {"path": secret_dir, "type": "Directory"}
        print(f"podman {podman_version} < 4.4: the tokens Secret volume is a hostPath ({secret_dir}) here")
    elif "secret" in v:
        v["secret"]["secretName"] = sec["metadata"]["name"]
        # podman 4.3 dereferences `optional` unset (segfault) and ignores the secret when true (podman issue 16636).
        v["secret"]["optional"] = False
yaml.safe_dump_all(list(docs.values()), open(out, "w"), sort_keys=False)
PY
  echo "local variant of deployment.yaml (+ configmap, secret): $WORK/k8s-local.yaml"
  if grep -q 'hostPath:' "$WORK/k8s-local.yaml"; then note "tokens Secret as a hostPath (podman < 4.4)"; fi
  podman kube play "$WORK/k8s-local.yaml"
  export SINKSCOPE_SERVER=127.0.0.1:$gport METRICS_URL=http://127.0.0.1:$mport/metrics
  local ctr; ctr=$(podman ps --format '{{.Names}}' | grep "^$P-sinkscoped" | grep -v infra | sed -n 1p)
  query_server || { podman logs --tail 30 "$ctr" 2>&1; return 1; }
  # What the pod spec asked for, as podman applied it.
  echo "pod container $ctr: user $(podman exec "$ctr" id -u), root fs read-only: $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$ctr")," \
       "tokens file: $(podman exec "$ctr" ls /run/secrets/sinkscope/)"
  [[ $(podman exec "$ctr" id -u) == 10001 ]] || return 1
  check_json_logs "$ctr" "auth: 1 token(s)" ${JOB_ID:+"$JOB_ID"} || { echo "pod log: not the JSON log expected"; return 1; }
  podman rm -f -v -t 5 "$ctr" >/dev/null; podman kube down "$WORK/k8s-local.yaml" >/dev/null
  note "kube play: job ${JOB_SECONDS}s"
}

do_compose() {
  # 1. Schema: Debian's docker-compose 1.29 validates against its Compose-spec schema. It predates the top-level
  # `name:` key (Compose v2 reads it), so the check runs on a copy without that line.
  sed '/^name: /d' deploy/compose.yaml > deploy/.compose-check.yaml
  local rc=0
  SINKSCOPE_TOKENS_FILE=/dev/null docker-compose -f deploy/.compose-check.yaml config -q || rc=$?
  rm -f deploy/.compose-check.yaml
  [[ $rc == 0 ]] || { echo "compose.yaml fails the Compose schema"; return 1; }
  echo "compose.yaml: valid (docker-compose $(docker-compose version --short))"
  # 2. Up with podman-compose: the CPU image, the tiny pair as the models directory, a tokens file, loopback
  # ports. podman-compose 1.0.3 ignores the GPU reservation (docs/deploy.md gives the podman CDI form).
  make_tokens
  local gport mport; gport=$(free_port); mport=$(free_port)
  sed 's#^\(\s*path: \).*/models/\(tiny-[a-z]*\)#\1/models/\2#; s#^datasets_dir: .*#datasets_dir: /usr/local/share/sinkscope/models/datasets#' \
    deploy/demo-models.yaml > "$WORK/compose-config.yaml"
  chown 10001:10001 "$WORK/tokens.yaml"; chmod 0400 "$WORK/tokens.yaml"
  cat "$WORK/compose-config.yaml" | grep -E 'path:|datasets_dir:'
  export SINKSCOPE_IMAGE=$IMAGE SINKSCOPE_CONFIG=$WORK/compose-config.yaml SINKSCOPE_MODELS_DIR=$ROOT/models \
         SINKSCOPE_TOKENS_FILE=$WORK/tokens.yaml SINKSCOPE_GRPC_BIND=127.0.0.1 SINKSCOPE_GRPC_PORT=$gport \
         SINKSCOPE_METRICS_PORT=$mport
  local pc=(podman-compose -p "$P" -f deploy/compose.yaml)
  "${pc[@]}" up -d sinkscoped > "$WORK/compose-up.log" 2>&1 || { cat "$WORK/compose-up.log"; return 1; }
  grep -E '^podman (run|volume)' "$WORK/compose-up.log" | cut -c1-400 || true
  export SINKSCOPE_SERVER=127.0.0.1:$gport METRICS_URL=http://127.0.0.1:$mport/metrics
  local ctr="${P}_sinkscoped_1"
  query_server || { podman logs --tail 30 "$ctr" 2>&1; "${pc[@]}" down -v >/dev/null 2>&1; return 1; }
  echo "tokens secret in the container: $(podman exec "$ctr" ls -l /run/secrets/sinkscope-tokens)"
  check_json_logs "$ctr" "auth: 1 token(s)" ${JOB_ID:+"$JOB_ID"} \
    || { echo "compose log: not the JSON log expected"; "${pc[@]}" down -v >/dev/null 2>&1; return 1; }
  "${pc[@]}" down -v > "$WORK/compose-down.log" 2>&1 || { cat "$WORK/compose-down.log"; return 1; }
  note "podman-compose up: job ${JOB_SECONDS}s"
}

do_systemd() {
  # The unit under a real systemd (PID 1 of a container, podman --systemd=always), with the image's binaries and
  # demo config; the tokens file where the unit's LoadCredential expects it. procps: the unit's ExecReload runs
  # /bin/kill, which every Debian node has (priority important) and the slim image lacks.
  make_tokens
  podman build -q --format docker -t "localhost/$P-systemd" -f - . > /dev/null <<EOF
FROM $IMAGE
USER root
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd systemd-sysv procps >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && systemctl mask systemd-logind.service getty.target console-getty.service systemd-udevd.service \\
      systemd-udev-trigger.service systemd-networkd-wait-online.service systemd-resolved.service >/dev/null 2>&1 || true
COPY deploy/sinkscoped.service /etc/systemd/system/sinkscoped.service
RUN systemctl enable sinkscoped.service
HEALTHCHECK NONE
ENTRYPOINT ["/sbin/init"]
CMD []
EOF
  install -m 0600 "$WORK/tokens.yaml" "$WORK/tokens-root.yaml"
  local gport; gport=$(free_port)
  # --privileged: the unit's sandboxing (ProtectSystem, PrivateTmp, ...) makes systemd set up mount namespaces, which
  # PID 1 of a real host may do and an unprivileged container may not. /run with shared propagation, as on a host:
  # podman's default (private) hides the credentials mount that LoadCredential= makes from the service, which then
  # finds an empty root-only directory ("tokens file: Permission denied"; systemd issue 38103).
  podman run -d --name "$P-systemd" --systemd=always --privileged --tmpfs /run:rw,rshared,mode=0755 \
    -p "127.0.0.1:$gport:50051" \
    -v "$WORK/tokens-root.yaml:/etc/sinkscope/tokens.yaml:ro" \
    "localhost/$P-systemd" >/dev/null
  local state=""
  for _ in $(seq 1 60); do
    state=$(podman exec "$P-systemd" systemctl is-active sinkscoped 2>/dev/null || true)
    [[ $state == active ]] && break; sleep 1
  done
  podman exec "$P-systemd" systemctl status --no-pager sinkscoped 2>&1 | sed -n 1,12p
  [[ $state == active ]] || { podman exec "$P-systemd" journalctl -u sinkscoped --no-pager | tail -20; return 1; }
  export SINKSCOPE_SERVER=127.0.0.1:$gport; unset METRICS_URL
  query_server || { podman exec "$P-systemd" journalctl -u sinkscoped --no-pager | tail -20; return 1; }
  local u; u=$(podman exec "$P-systemd" systemctl show -p MainPID --value sinkscoped)
  echo "main pid $u runs as $(podman exec "$P-systemd" stat -c %U "/proc/$u")"
  [[ $(podman exec "$P-systemd" stat -c %U "/proc/$u") == sinkscope ]] || { echo "not running as sinkscope"; return 1; }
  # Reload: ExecReload sends SIGHUP, the server re-reads --tokens_file and keeps running (same pid, same token).
  podman exec "$P-systemd" systemctl reload sinkscoped || { echo "systemctl reload failed"; return 1; }
  sleep 2
  local ur; ur=$(podman exec "$P-systemd" systemctl show -p MainPID --value sinkscoped)
  [[ $(podman exec "$P-systemd" systemctl is-active sinkscoped) == active && $ur == "$u" ]] \
    || { echo "after reload: not the same running server (pid $u -> $ur)"; return 1; }
  podman exec "$P-systemd" journalctl -u sinkscoped --no-pager -o cat | grep -E 'auth: reloaded|Reload' | tail -3
  podman exec "$P-systemd" journalctl -u sinkscoped --no-pager -o cat | grep -q 'auth: reloaded' \
    || { echo "no 'auth: reloaded' in the journal"; return 1; }
  cli models >/dev/null || { echo "the token is refused after the reload"; return 1; }
  echo "systemctl reload: SIGHUP, tokens re-read, same pid $u, still serving"
  note "reload ok (same pid)"
  # Restart on failure: SIGKILL the server, systemd brings it back (RestartSec=5s) with the job store.
  podman exec "$P-systemd" sh -c "kill -9 $u"; sleep 7
  local u2; u2=$(podman exec "$P-systemd" systemctl show -p MainPID --value sinkscoped)
  [[ $u2 != 0 && $u2 != "$u" ]] || { echo "not restarted after kill -9"; return 1; }
  cli health --wait 60 >/dev/null || { echo "not SERVING after the restart"; return 1; }
  echo "restarted after kill -9 (pid $u -> $u2) and SERVING again"
  if [[ -n ${JOB_ID:-} ]]; then
    cli get "$JOB_ID" | sed -n 1,2p | tee "$WORK/systemd-get.out"
    grep -q "^job $JOB_ID  *SUCCEEDED" "$WORK/systemd-get.out" || { echo "job $JOB_ID not kept across kill -9"; return 1; }
    note "job kept across kill -9"
  fi
  # Clean stop.
  podman exec "$P-systemd" systemctl stop sinkscoped
  podman exec "$P-systemd" systemctl show -p ExecMainStatus -p Result sinkscoped
  [[ $(podman exec "$P-systemd" systemctl show -p Result --value sinkscoped) == success ]] || return 1
  podman exec "$P-systemd" systemd-analyze verify /etc/systemd/system/sinkscoped.service && echo "systemd-analyze verify: clean"
  podman exec "$P-systemd" systemd-analyze security --no-pager sinkscoped 2>/dev/null | tail -1
  note "$(podman exec "$P-systemd" systemd-analyze security --no-pager sinkscoped 2>/dev/null | tail -1 | sed 's/→ //')"
  podman rm -f -v -t 5 "$P-systemd" >/dev/null
}

do_cuda() {
  # Only where it can mean something: a GPU with the NVIDIA Container Toolkit's CDI spec, and CUDA torch wheels in
  # the build context (deploy/Dockerfile.cuda says how to get them). Elsewhere: reported as skipped (pending).
  local why=()
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || why+=("no GPU (nvidia-smi)")
  [[ -e /etc/cdi/nvidia.yaml ]] || compgen -G '/var/run/cdi/nvidia*.yaml' >/dev/null || why+=("no CDI spec (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)")
  compgen -G '.torch-wheels/torch-*.whl' >/dev/null || why+=("no .torch-wheels/torch-*.whl")
  if [[ ${#why[@]} -gt 0 ]]; then note "CUDA image pending: ${why[*]}"; return "$SKIP_RC"; fi
  podman build --format docker -f deploy/Dockerfile.cuda -t localhost/sinkscope:cuda --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "JOBS=$JOBS" . 2>&1 | grep -vE '^(Getting image source|Copying (blob|config)|Writing manifest|Storing signatures)'
  note "cuda image $(( $(podman image inspect --format '{{.Size}}' localhost/sinkscope:cuda) / 1000000 )) MB"
  make_tokens; chown 10001:10001 "$WORK/tokens.yaml"; chmod 0400 "$WORK/tokens.yaml"
  local gport; gport=$(free_port)
  # The image's default config: the tiny pair on cuda:0.
  podman run -d --name "$P-cuda" --device nvidia.com/gpu=all -p "127.0.0.1:$gport:50051" \
    -v "$WORK/tokens.yaml:/run/secrets/sinkscope-tokens:ro" --read-only --cap-drop=ALL \
    --security-opt=no-new-privileges localhost/sinkscope:cuda >/dev/null
  export SINKSCOPE_SERVER=127.0.0.1:$gport; unset METRICS_URL
  query_server || { podman logs --tail 30 "$P-cuda"; return 1; }
  grep -q 'cuda:0' "$WORK/models.out" || { echo "models not on cuda:0"; return 1; }
  podman stop -t 30 "$P-cuda" >/dev/null
  note "cuda: job ${JOB_SECONDS}s"
}

cleanup_all
CURRENT=prereqs; step prereqs do_prereqs critical
CURRENT=base;    step base do_base critical
CURRENT=build;   step build do_build critical
CURRENT=image;   step image do_image critical
CURRENT=run;     step run do_run
CURRENT=k8s;     step k8s do_k8s
CURRENT=compose; step compose do_compose
CURRENT=systemd; step systemd do_systemd
CURRENT=cuda;    step cuda do_cuda
summary
exit $FAILED
