#!/usr/bin/env bash
# Measures the shipped tiny pair with sinkscope itself (server + client), for the "study metrics" section of
# models/README.md. Starts sinkscoped on 127.0.0.1 with deploy/demo-models.yaml, runs the RoPE-vs-DroPE jobs and
# writes each job's streamed result as JSON and as a table into $OUT, then stops the server.
#
# Environment: BIN=build (a build directory that has server/sinkscoped and client/sinkscope), OUT=build/train/metrics,
#              PROMPTS=64 (first N brown-heldout paragraphs), TOKENS=128 (truncation, BOS included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${BIN:=build}" "${OUT:=build/train/metrics}" "${PROMPTS:=64}" "${TOKENS:=128}"
mkdir -p "$OUT"
for b in "$BIN/server/sinkscoped" "$BIN/client/sinkscope"; do
  [[ -x $b ]] || { echo "measure_pair: $b not built" >&2; exit 1; }
done

PORT_FILE=$(mktemp)
"$BIN/server/sinkscoped" --config deploy/demo-models.yaml --listen 127.0.0.1:0 --port_file "$PORT_FILE" \
  >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; fi
  rm -f "$PORT_FILE"
}
trap cleanup EXIT
for _ in $(seq 1 300); do [[ -s $PORT_FILE ]] && break; sleep 0.1; done
[[ -s $PORT_FILE ]] || { echo "measure_pair: server did not start" >&2; cat "$OUT/server.log"; exit 1; }
export SINKSCOPE_SERVER=127.0.0.1:$(cat "$PORT_FILE")
CLI="$BIN/client/sinkscope"
"$CLI" health --wait 300 >/dev/null
"$CLI" models | tee "$OUT/models.txt"

job() {  # job NAME ARGS... : the same (deterministic) job streamed as JSON lines and rendered as tables
  local name=$1
  shift
  echo "== $name: $*"
  "$CLI" -q -f json run -m tiny-rope,tiny-drope "$@" >"$OUT/$name.json"
  "$CLI" -q run -m tiny-rope,tiny-drope "$@" >"$OUT/$name.txt"
}

HELD=(--dataset brown-heldout --max-prompts "$PROMPTS" --max-tokens "$TOKENS")
# The study's phase preset (sink rate τ=0.3 over all query rows, BOS residual norms/ratios and spike layer, matrix
# entropy, massive Q/K/V λ=5, perplexity with BOS-MLP ablation at the spike layer).
job phase "${HELD[@]}" --phase
# Sink rate without query row 0, and the study's pre-rotary "manual" attention.
job sink_exclude_bos "${HELD[@]}" --sink-rate --query-rows exclude-bos
job sink_pre_rotary "${HELD[@]}" --sink-rate --attention pre-rotary
# Q/K massive-dimension disruption (study Exp. 2: zero replacement, λ=5) with random-dimension controls.
job qk_disruption "${HELD[@]}" --perplexity --qk-disruption --control-seeds 42,43,44,45,46
# BOS-MLP ablation at every layer (the study ablates only at its spike layer).
job bos_mlp_layers "${HELD[@]}" --perplexity --bos-mlp 0 --bos-mlp 1 --bos-mlp 2 --bos-mlp 3 --bos-mlp 4 --bos-mlp 5
# Exp. 1 on the study's own three texts.
job massive_study_texts --dataset study-massive-comparison --massive
echo "measure_pair: results in $OUT"
