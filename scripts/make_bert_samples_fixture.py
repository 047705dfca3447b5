#!/usr/bin/env python3
"""Writes tests/golden/data/bert/bert_samples_fixture.json: BERT samples built by Megatron Core's
algorithm (BERTMaskedWordPieceDataset.__getitem__ with MaskedWordPieceDataset.
_create_masked_lm_predictions, pretrain_bert.py's settings: max n-gram 3, whole-word masking, no
permutation, no geometric n-grams) in Python with numpy's legacy RandomState, for
tests/data/bert_dataset_test.cc. Needs numpy (run it on the GPU machine):

  python3 scripts/make_bert_samples_fixture.py --vocab tests/golden/data/bert/vocab-lowercase-8k.txt \
      --output tests/golden/data/bert/bert_samples_fixture.json

Sentences are synthetic token ids (including "##" pieces) drawn with Python's random.Random, so
the fixture checks sample construction and masking independently of tokenization.
"""
import argparse
import json
import os
import random

import numpy

MASK_PROB, MAX_NGRAM, FULL_WORD = 0.15, 3, True


def megatron_vocab(path):
    """bert_tokenization.load_vocab plus _BertWordPieceTokenizer's added [BOS]/[EOS]."""
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index
    inv = {v: k for k, v in vocab.items()}
    for token in ("[BOS]", "[EOS]"):
        if token not in vocab:
            inv[len(vocab)] = token
            vocab[token] = len(vocab)
    return vocab, inv


def masked_lm(tokens, target, rs, vocab, inv, lookup):
    cls, sep, mask = vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]
    candidates = []
    for i, t in enumerate(tokens):
        if t in (cls, sep):
            continue
        if inv[t].startswith("##") and FULL_WORD and candidates:
            candidates[-1].append(i)
        else:
            candidates.append([i])
    n_maskings = min(MASK_PROB * target, max(1, int(round(len(tokens) * MASK_PROB))))
    nvals = numpy.arange(MAX_NGRAM, dtype=numpy.int64) + 1
    nprobs = 1.0 / nvals
    nprobs = nprobs / nprobs.sum(keepdims=True)
    ngrams = [[candidates[idx:idx + n] for n in nvals] for idx in range(len(candidates))]
    rs.shuffle(ngrams)
    out = list(tokens)
    masked, masked_set = [], set()
    for grams in ngrams:
        if len(masked) >= n_maskings:
            break
        if not grams:
            continue
        p = nprobs[:len(grams)] / nprobs[:len(grams)].sum(keepdims=True)
        n = rs.choice(nvals[:len(grams)], p=p)
        while True:
            indices = sum(grams[n - 1], [])
            n = n - 1
            if n_maskings >= len(masked) + len(indices):
                skip = False
                break
            if n == 0:
                skip = True
                break
        if skip or any(i in masked_set for i in indices):
            continue
        for i in indices:
            masked_set.add(i)
            if rs.random() < 0.8:
                out[i] = mask
            elif rs.random() >= 0.5:
                out[i] = lookup[rs.randint(0, len(lookup))]
            masked.append((i, tokens[i]))
    masked.sort()
    return out, masked


def bert_sample(sentences, target, seq_length, seed, vocab, inv, lookup):
    rs = numpy.random.RandomState(seed=seed)
    pivot, is_random = 1, False
    if len(sentences) >= 3:
        pivot = rs.randint(low=1, high=len(sentences))
    is_random = rs.random() < 0.5
    a = [t for s in sentences[:pivot] for t in s]
    b = [t for s in sentences[pivot:] for t in s]
    if is_random:
        a, b = b, a
    while len(a) + len(b) > target:
        split = a if len(a) > len(b) else b
        if rs.random() < 0.5:
            del split[0]
        else:
            del split[-1]
    tokens = [vocab["[CLS]"], *a, vocab["[SEP]"]]
    types = [0] * (len(a) + 2)
    if b:
        tokens += [*b, vocab["[SEP]"]]
        types += [1] * (len(b) + 1)
    tokens, masked = masked_lm(tokens, target, rs, vocab, inv, lookup)
    pad = seq_length - len(tokens)
    labels = [-1] * seq_length
    for i, label in masked:
        labels[i] = label
    return {"tokens": tokens + [vocab["[PAD]"]] * pad, "types": types + [0] * pad,
            "labels": labels, "is_random": int(is_random)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    vocab, inv = megatron_vocab(args.vocab)
    lookup = list(inv.keys())
    words = [i for t, i in vocab.items() if not t.startswith("[")]
    rng = random.Random(7)
    samples = []
    for idx in range(args.samples):
        sentences = [[rng.choice(words) for _ in range(rng.randint(1, 30))]
                     for _ in range(rng.randint(2, 5))]
        target = args.seq_length - 3
        if rng.random() < 0.2:
            target = rng.randint(2, args.seq_length - 3)
        sample_seed = (args.seed + idx) % 2**32
        s = bert_sample(sentences, target, args.seq_length, sample_seed, vocab, inv, lookup)
        s.update({"sentences": sentences, "target_length": target, "sample_seed": sample_seed})
        samples.append(s)
    with open(args.output, "w") as f:
        json.dump({"vocab": os.path.basename(args.vocab), "seq_length": args.seq_length,
                   "seed": args.seed, "numpy": numpy.__version__, "samples": samples}, f)
    print(f"wrote {len(samples)} samples to {args.output}")


if __name__ == "__main__":
    main()
