#!/usr/bin/env bash
# Offline step: trains the tiny model pair's SentencePiece BPE tokenizer on build/corpus/brown-train.txt with the
# Debian `sentencepiece` CLI (spm_train) and installs models/tokenizer/tokenizer.model.
# Run tools/corpus/prepare_brown.sh first. See tools/corpus/README.md for every setting and why.
#
# Encoding-relevant settings mirror Llama-2's tokenizer.model (BPE, byte_fallback, identity normaliser,
# add_dummy_prefix=true, remove_extra_whitespaces=false, split_digits, whitespace-only pieces, unk/bos/eos = 0/1/2,
# no pad). The training run is deterministic (one thread, the whole corpus loaded, no sampling, fixed seed, relative
# paths recorded in the model), so rerunning it reproduces the committed file byte for byte.
#
# Environment: VOCAB_SIZE (default 4096), SPM_TRAIN (default spm_train), TOKENIZER_OUT (default models/tokenizer).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${SPM_TRAIN:=spm_train}" "${VOCAB_SIZE:=4096}"
OUT="${TOKENIZER_OUT:-models/tokenizer}"
INPUT=build/corpus/brown-train.txt     # relative: the path is recorded in trainer_spec.input
PREFIX=build/tokenizer/tokenizer       # relative: recorded in trainer_spec.model_prefix

[[ -f "$INPUT" ]] || { echo "train_tokenizer: $INPUT missing; run tools/corpus/prepare_brown.sh first" >&2; exit 1; }
command -v "$SPM_TRAIN" >/dev/null || { echo "train_tokenizer: $SPM_TRAIN not found (apt-get install sentencepiece)" >&2; exit 1; }
mkdir -p "$(dirname "$PREFIX")" "$OUT"

"$SPM_TRAIN" \
  --input="$INPUT" --input_format=text --model_prefix="$PREFIX" \
  --model_type=bpe --vocab_size="$VOCAB_SIZE" \
  --normalization_rule_name=identity --add_dummy_prefix=true --remove_extra_whitespaces=false \
  --byte_fallback=true --split_digits=true --allow_whitespace_only_pieces=true \
  --split_by_unicode_script=true --split_by_whitespace=true --split_by_number=true \
  --treat_whitespace_as_suffix=false --max_sentencepiece_length=16 \
  --character_coverage=0.99995 \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --unk_piece='<unk>' --bos_piece='<s>' --eos_piece='</s>' --pad_piece='<pad>' \
  --vocabulary_output_piece_score=true --hard_vocab_limit=true --use_all_vocab=false \
  --input_sentence_size=0 --shuffle_input_sentence=false --max_sentence_length=16384 \
  --num_threads=1 --random_seed=20240101 --self_test_sample_size=0 \
  --minloglevel=1

cp "$PREFIX.model" "$OUT/tokenizer.model"
echo "train_tokenizer: $OUT/tokenizer.model sha256 $(sha256sum "$OUT/tokenizer.model" | cut -d' ' -f1)"
