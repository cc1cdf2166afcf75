#!/usr/bin/python3
"""Golden ids for the C++ tokenizer tests, produced at test time by the reference implementation
(python3-sentencepiece, Debian 0.1.97; run with /usr/bin/python3).

  make_goldens.py --repo <repository root> --out <dir>

Writes into <dir>:
  *.model        tokenizers trained here (python sentencepiece trainer, deterministic settings, offline input:
                 the committed held-out Brown text plus a few multilingual lines), plus variants edited on the
                 protobuf wire level (pieces flagged UNUSED);
  unigram.model  a UNIGRAM model (the C++ loader must refuse it);
  goldens.json   for every model: metadata (special ids, vocab with piece types, sha256), encode cases (text as
                 hex bytes -> ids), decode cases (ids -> text as hex bytes).

No network, no randomness outside random.Random(seed).
"""

import argparse
import hashlib
import json
import os
import random
import struct
import sys

import sentencepiece as spm

SPACE = "\u2581"

# Fixed texts: every class the tokenizer must get right.
FIXED_TEXTS = [
    "", "a", "Hello world", "Hello World!", "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How's it going? (Fine.) [ok] {x} <y> @#$%^&*_+=|\\/~`", "\"quoted\" 'single' -- dash...",
    "In 1964, 3.14159 and 1,000,000; 2024-11-24 12:34:56", "007", "12345678901234567890", "x1y22z333",
    "a  b   c    d", "word     word", " leading", "  two leading", "trailing ", "trailing  ", " ", "  ", "   ",
    "  both  ", "tab\there", "\t", "\tleading tab", "line1\nline2", "\n", "\n\n", "crlf\r\nend", "mixed \t \n spaces",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 Stra\u00dfe \u00c6r\u00f8 \u0141\u00f3d\u017a", "\u00c5ngstr\u00f6m",
    "e\u0301 (combining acute)", "\u4f60\u597d\uff0c\u4e16\u754c", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440",
    "\u0645\u0631\u062d\u0628\u0627", "\U0001F44D\U0001F3FD family "
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 flag \U0001F1E9\U0001F1EA", "\U0001F600",
    "\U0010FFFF", "\ue000 private use", "\U0001D518\U0001D52B\U0001D526\U0001D520\U0001D52C\U0001D521\U0001D522",
    "\ufffd replacement", SPACE, SPACE + "hello", "a" + SPACE * 2 + "b", "\u00a0nbsp", "\u3000ideographic space",
    "em\u2003space", "\uff21\uff22\uff23\uff11\uff12\uff13 fullwidth", "\ufb01 ligature", "\u2460 \u2122 \u00bd",
    "zero\u200bwidth", "soft\u00adhyphen", "a" * 1000, "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
    "ab" * 500, " ".join(["the"] * 300), "<s>", "</s>", "<unk>", "<pad>", "<0x41>", "<s>hello</s>", "<tool>",
    "<tool_call>x</tool_call>", "use <tool> and @@ and <ctrl>", "@@@", "[MASK] fill", "MiXeD CaSe WoRdS",
    "don't won't can't I'm you're", "aaa", "eee", "sss", "ooo", "lll", "ttt", "aaaaaaa", "a aaa aaaaa", "hmmm",
    "zzz", "ssss", "eeeee", "Mississippi", "bookkeeper", "oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo", "e-mail: someone@example.com, https://example.org/path?q=1&r=2",
]

# Byte strings that are not valid UTF-8 (the normaliser turns each malformed byte into U+FFFD).
INVALID_UTF8 = [
    b"\xff", b"abc\x80def", b"\xc3", b"caf\xc3", b"\xed\xa0\x80 surrogate", b"\xf4\x90\x80\x80 above max",
    b"\xc0\xaf overlong", b"\xe0\x80\xaf overlong3", b"a\x00b nul", b"\xfe\xfe", b" \xff ", b"\x80\x80\x80",
]

MULTILINGUAL_TRAIN_LINES = [
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade, \u00e9t\u00e9 \u00e0 Montr\u00e9al.",
    "Gr\u00fc\u00dfe aus M\u00fcnchen und K\u00f6ln, sch\u00f6ne Stra\u00dfe.",
    "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u4f60\u597d\u4f60\u597d\u4e16\u754c\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u65e5\u672c\u8a9e\u3002",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041f\u0440\u0438\u0432\u0435\u0442.",
    "Numbers 0123456789 and 2024 and 1964 and 3.14159.",
    "Tabs\tand  double  spaces   and   more    spaces.",
]


def hexs(b):
    return b.hex()


# --- minimal protobuf wire helpers (python3-protobuf is not installed) ---------------------------------------
def read_varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def fields(buf):
    """Yields (field number, wire type, raw bytes of the whole field incl. tag, payload)."""
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            val, pos = read_varint(buf, pos)
            payload = val
        elif wt == 1:
            payload = buf[pos:pos + 8]
            pos += 8
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            payload = buf[pos:pos + n]
            pos += n
        elif wt == 5:
            payload = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, buf[start:pos], payload


def piece_fields(sub):
    piece, score, typ = b"", 0.0, 1
    for num, wt, _, payload in fields(sub):
        if num == 1:
            piece = payload
        elif num == 2:
            score = struct.unpack("<f", payload)[0]
        elif num == 3:
            typ = payload
    return piece, score, typ


def flag_unused(model_bytes, every):
    """Copy of a model with every `every`-th multi-character NORMAL piece (not a character) typed UNUSED (5)."""
    out = bytearray()
    k = 0
    for num, wt, raw, payload in fields(model_bytes):
        if num == 1 and wt == 2:
            piece, _, typ = piece_fields(payload)
            if typ == 1 and len(piece.decode("utf-8")) >= 2:
                k += 1
                if k % every == 0:
                    sub = bytearray()
                    for n2, _, raw2, _ in fields(payload):
                        if n2 != 3:
                            sub += raw2
                    sub += varint((3 << 3) | 0) + varint(5)
                    out += varint((1 << 3) | 2) + varint(len(sub)) + sub
                    continue
        out += raw
    return bytes(out)


# --- models --------------------------------------------------------------------------------------------------
def train_models(repo, out):
    heldout = os.path.join(repo, "models", "datasets", "brown-heldout.txt")
    train_txt = os.path.join(out, "train.txt")
    with open(heldout, encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if l]
    with open(train_txt, "w", encoding="utf-8") as f:
        for l in lines + MULTILINGUAL_TRAIN_LINES * 20:
            f.write(l + "\n")
    common = dict(input=train_txt, model_type="bpe", input_sentence_size=0, shuffle_input_sentence=False,
                  num_threads=1, max_sentence_length=20000, minloglevel=2)
    models = {}

    def train(name, **kw):
        prefix = os.path.join(out, name)
        spm.SentencePieceTrainer.train(model_prefix=prefix, **{**common, **kw})
        models[name] = prefix + ".model"

    # Llama-2-like settings, a small vocab, user-defined symbols that prefix each other, a control symbol.
    train("identity_bytes", vocab_size=640, normalization_rule_name="identity", byte_fallback=True,
          add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
          character_coverage=1.0, user_defined_symbols=["<tool>", "<tool_call>", "</tool_call>", "@@", "[MASK]"],
          control_symbols=["<ctrl>"])
    # nmt_nfkc normaliser (precompiled charsmap), extra-whitespace removal, no byte fallback (unk runs), a
    # user-defined symbol that NFKC would change, and a denormaliser rule.
    denorm = os.path.join(out, "denorm.tsv")
    with open(denorm, "w", encoding="utf-8") as f:
        f.write("3F\t21\n")  # '?' -> '!' when decoding
    train("nfkc_unk", vocab_size=400, normalization_rule_name="nmt_nfkc", byte_fallback=False,
          character_coverage=0.9995, user_defined_symbols=["\ufb01x", "<tool>"], denormalization_rule_tsv=denorm)
    # Whitespace as suffix (spaces kept), pad id, nfkc_cf (case folding) rules.
    train("suffix_pad", vocab_size=450, normalization_rule_name="nfkc_cf", byte_fallback=True,
          treat_whitespace_as_suffix=True, add_dummy_prefix=True, remove_extra_whitespaces=False, pad_id=3,
          character_coverage=1.0)
    # No dummy prefix, whitespace kept as is.
    train("no_prefix", vocab_size=420, normalization_rule_name="identity", byte_fallback=True,
          add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=False, character_coverage=1.0)
    # UNUSED pieces: merges into them must be re-split into the pair that formed them.
    with open(models["identity_bytes"], "rb") as f:
        edited = flag_unused(f.read(), every=5)
    models["identity_unused"] = os.path.join(out, "identity_unused.model")
    with open(models["identity_unused"], "wb") as f:
        f.write(edited)
    # A unigram model: the C++ loader must refuse it.
    spm.SentencePieceTrainer.train(model_prefix=os.path.join(out, "unigram"), **{**common, "model_type": "unigram",
                                                                                 "vocab_size": 300})
    return models


def random_text(rng, vocab_pieces):
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4 + list("0123456789") * 2 +
                list(".,;:!?'\"()-[]{}<>/@#&*_") + [" "] * 30 + ["  ", "   ", "\t", "\n"] +
                list("\u00e9\u00e8\u00fc\u00f6\u00df\u00e7\u00c5") + list("\u4f60\u597d\u4e16\u754c\u65e5\u672c") +
                ["\U0001F600", "\U0001F44D", "\u2581", "\ufffd", "\u00a0", "\u3000", "\uff21", "\ufb01", "\u0301",
                 "\u200b", "\U0010FFFF", "\ue000", "<s>", "<unk>", "<tool>", "@@", "~"])
    parts = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.45 and vocab_pieces:
            p = rng.choice(vocab_pieces)
            parts.append(p.replace(SPACE, " ") if rng.random() < 0.8 else p)
        else:
            parts.append(rng.choice(alphabet))
    return "".join(parts)


def model_meta(sp, path):
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    vocab = []
    for i in range(sp.get_piece_size()):
        t = ("control" if sp.is_control(i) else "unknown" if sp.is_unknown(i) else "byte" if sp.is_byte(i)
             else "unused" if sp.is_unused(i) else "normal")
        vocab.append([sp.id_to_piece(i), t])
    return {"path": path, "sha256": digest, "vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(), "unk_id": sp.unk_id(), "pad_id": sp.pad_id(), "vocab": vocab}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--random-cases", type=int, default=400)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    models = {"shipped": os.path.join(args.repo, "models", "tokenizer", "tokenizer.model")}
    models.update(train_models(args.repo, args.out))
    with open(os.path.join(args.repo, "models", "datasets", "brown-heldout.txt"), encoding="utf-8") as f:
        heldout = [l for l in f.read().split("\n") if l]

    result = {"sentencepiece_version": spm.__version__, "models": {}, "encode": [], "decode": []}
    for name, path in models.items():
        sp = spm.SentencePieceProcessor(model_file=path)
        meta = model_meta(sp, path)
        result["models"][name] = meta
        rng = random.Random(f"goldens:{name}")
        normal_pieces = [p for p, t in meta["vocab"] if t == "normal"]

        texts = [t.encode("utf-8") for t in FIXED_TEXTS] + INVALID_UTF8
        # Strings equal to pieces: with the "▁" spelled as a space, as a literal U+2581, and stripped.
        for p in rng.sample(normal_pieces, min(150, len(normal_pieces))):
            texts += [p.replace(SPACE, " ").encode(), p.encode(), p.lstrip(SPACE).encode()]
        lines = heldout if name == "shipped" else rng.sample(heldout, 150)
        texts += [l.encode() for l in lines]
        texts += [random_text(rng, normal_pieces).encode() for _ in range(args.random_cases)]
        # Every invalid-UTF-8 probe also embedded in text.
        texts += [b"word " + b + b" word" for b in INVALID_UTF8]

        encoded = []
        for t in texts:
            ids = sp.encode(t)  # bytes in: no Python-side UTF-8 handling
            encoded.append(ids)
            result["encode"].append({"model": name, "text": hexs(t), "ids": ids})
        # Decode: what encode produced, plus random id sequences over the whole vocabulary (control, unk, byte
        # pieces included), plus byte runs that are not valid UTF-8.
        vocab_n = meta["vocab_size"]
        seqs = encoded[: len(FIXED_TEXTS)]
        byte_ids = [i for i, (_, t) in enumerate(meta["vocab"]) if t == "byte"]
        space_ids = [i for i, (p, _) in enumerate(meta["vocab"]) if p.startswith(SPACE)]
        for _ in range(300):
            seqs.append([rng.randrange(vocab_n) for _ in range(rng.randint(0, 12))])
        for _ in range(100):
            seq = []
            for _ in range(rng.randint(1, 8)):
                r = rng.random()
                if byte_ids and r < 0.4:
                    seq.extend(rng.choice(byte_ids) for _ in range(rng.randint(1, 4)))
                elif space_ids and r < 0.7:
                    seq.append(rng.choice(space_ids))
                else:
                    seq.append(rng.choice([sp.bos_id(), sp.eos_id(), sp.unk_id(), rng.randrange(vocab_n)]))
            seqs.append([i for i in seq if 0 <= i < vocab_n])
        for ids in seqs:
            result["decode"].append({"model": name, "ids": ids, "text": hexs(sp.decode(ids).encode("utf-8"))})

    result["unigram_model"] = os.path.join(args.out, "unigram.model")
    tmp = os.path.join(args.out, "goldens.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(args.out, "goldens.json"))
    print(f"make_goldens: {len(result['encode'])} encode and {len(result['decode'])} decode cases over "
          f"{len(models)} models -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
