#!/usr/bin/env bash
# The RoPE-vs-DroPE demo: installs dependencies, builds, starts sinkscoped on 127.0.0.1 with the bundled tiny
# models, waits for health, runs the paired phase comparison through the sinkscope client, prints the streamed
# result, and stops the server cleanly. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-$(nproc)}

deploy/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$JOBS" --target sinkscoped sinkscope

BIN=build
CONFIG=deploy/demo-models.yaml
if [[ ! -f models/tiny-rope/config.json || ! -f models/tiny-drope/config.json ]]; then
  # Until the trained tiny pair ships (models/README.md), use a random-initialised Llama pair in HF layout written
  # by the project's own generator, with the shipped Brown tokenizer. Results are then noise, not science.
  echo "demo: NOTE: trained tiny models not found in models/; using RANDOM-INITIALISED stand-ins (numbers are not meaningful)"
  OUT=build/demo-models
  if [[ ! -f $OUT/models.yaml ]]; then
    mkdir -p "$OUT"
    for att in rope nope; do
      /usr/bin/python3 tests/reference/make_tiny_llama.py --out "$OUT/random-$att" --layers 4 --hidden 128 \
        --heads 4 --kv-heads 4 --vocab 4096 --attention "$att" --shards 2 --seed 7 >/dev/null
      cp models/tokenizer/tokenizer.model models/tokenizer/tokenizer_config.json "$OUT/random-$att/"
    done
    cat > "$OUT/models.yaml" <<YAML
models:
  - {name: tiny-rope, path: random-rope, dtype: float32, description: "random-initialised RoPE stand-in"}
  - {name: tiny-drope, path: random-nope, dtype: float32, description: "random-initialised NoPE stand-in"}
datasets_dir: $ROOT/models/datasets
YAML
  fi
  CONFIG=$OUT/models.yaml
fi

PORT_FILE=$(mktemp)
LOG=build/demo-server.log
"$BIN/server/sinkscoped" --config "$CONFIG" --listen 127.0.0.1:0 --port_file "$PORT_FILE" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
  fi
  rm -f "$PORT_FILE"
}
trap cleanup EXIT

for _ in $(seq 1 100); do [[ -s $PORT_FILE ]] && break; sleep 0.1; done
if [[ ! -s $PORT_FILE ]]; then echo "demo: server did not start; log:"; cat "$LOG"; exit 1; fi
export SINKSCOPE_SERVER=127.0.0.1:$(cat "$PORT_FILE")
CLI="$BIN/client/sinkscope"
echo "demo: sinkscoped on $SINKSCOPE_SERVER (log: $LOG)"
"$CLI" health --wait 300 >/dev/null || { echo "demo: server not healthy; log:"; cat "$LOG"; exit 1; }
"$CLI" models
echo
echo "demo: RoPE vs DroPE on held-out Brown text (sink rate, BOS residual norms, matrix entropy, massive Q/K/V,"
echo "      perplexity and BOS-MLP ablation at the spike layer)"
"$CLI" run -m tiny-rope,tiny-drope --dataset brown-heldout --max-prompts "${DEMO_PROMPTS:-16}" --max-tokens 128 --phase
echo
echo "demo: done; stopping the server"
