#!/usr/bin/env python3
"""Builds a small BERT WordPiece vocab.txt (one token per line, id = line number) from JSON-lines
corpora with a "text" field. Standard library only.

  python3 scripts/make_wordpiece_vocab.py --size 8192 \
      --output tests/golden/data/bert/vocab-lowercase-8k.txt /work/shared/data/corpus/*.jsonl

Layout: [PAD] (id 0), [UNK], [CLS], [SEP], [MASK], then every character seen after BERT's basic
tokenization (lower-cased, accents stripped, punctuation split) and its "##" form, then the most
frequent words (70% of the remaining room) and word-final pieces "##xyz" (the rest), ties broken
alphabetically, so the output is deterministic. Not a trained WordPiece vocabulary (no likelihood
merges), but every word is encodable and common words are single tokens.
"""
import argparse
import collections
import json
import unicodedata

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def basic_tokenize(text):
    """BERT's BasicTokenizer (lower-case mode), simplified to what vocabulary building needs."""
    out = []
    for word in text.split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower())
                       if unicodedata.category(c) != "Mn"
                       and unicodedata.category(c) not in ("Cc", "Cf"))
        current = ""
        for ch in word:
            if is_punctuation(ch) or 0x4E00 <= ord(ch) <= 0x9FFF:
                if current:
                    out.append(current)
                out.append(ch)
                current = ""
            else:
                current += ch
        if current:
            out.append(current)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="JSON-lines files with a 'text' field")
    parser.add_argument("--size", type=int, default=8192, help="vocabulary size (default 8192)")
    parser.add_argument("--output", required=True, help="vocab.txt to write")
    args = parser.parse_args()

    words = collections.Counter()
    for path in args.inputs:
        with open(path, encoding="utf-8") as f:
            for line in f:
                words.update(basic_tokenize(json.loads(line)["text"]))

    vocab, seen = [], set()

    def add(token):
        if token not in seen and len(vocab) < args.size:
            seen.add(token)
            vocab.append(token)

    for t in SPECIALS:
        add(t)
    chars = sorted({c for w in words for c in w})
    for c in chars:
        add(c)
    for c in chars:
        add("##" + c)
    if len(vocab) >= args.size:
        raise SystemExit(f"--size {args.size} is too small for the {len(chars)} characters seen")

    room = args.size - len(vocab)
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
    for w, _ in ranked:
        if len(vocab) >= args.size - room * 3 // 10:
            break
        add(w)
    # Word-final pieces of the words left out, weighted by those words' counts.
    suffixes = collections.Counter()
    for w, n in words.items():
        if w not in seen:
            for k in range(2, min(6, len(w))):
                suffixes["##" + w[-k:]] += n
    for s, _ in sorted(suffixes.items(), key=lambda kv: (-kv[1], kv[0])):
        add(s)
    for w, _ in ranked:  # fill any remaining room with more words
        add(w)

    with open(args.output, "w", encoding="utf-8") as f:
        for t in vocab:
            f.write(t + "\n")
    print(f"wrote {len(vocab)} tokens ({len(chars)} characters) to {args.output}")


if __name__ == "__main__":
    main()
