#!/usr/bin/env python3
"""Writes tests/golden/data/t5/t5_samples_fixture.json: T5 samples built by Megatron Core's
algorithm (T5MaskedWordPieceDataset.__getitem__ with MaskedWordPieceDataset.
_create_masked_lm_predictions, pretrain_t5.py's settings: max n-gram 10, whole-word masking, no
permutation, n-gram sizes min(geometric(0.2), 10), every masked token -> [MASK]) in Python with
numpy's legacy RandomState, for tests/data/t5_dataset_test.cc. Needs numpy, not Megatron (run it
on the GPU machine):

  python3 scripts/make_t5_samples_fixture.py --vocab tests/golden/data/bert/vocab-lowercase-8k.txt \\
      --output tests/golden/data/t5/t5_samples_fixture.json

Sentences are synthetic token ids (including "##" pieces and, rarely, [CLS]/[SEP], which
masking skips) drawn with Python's random.Random, so the fixture checks sample construction and
masking independently of tokenization. The same construction as make_bert_samples_fixture.py,
with T5's masking options and its encoder/decoder layout.
"""
import argparse
import json
import os
import random
from collections import deque

import numpy

MASK_PROB, MAX_NGRAM, FULL_WORD, GEOMETRIC_P = 0.15, 10, True, 0.2


def megatron_vocab(path, vocab_extra_ids):
    """bert_tokenization.load_vocab, then _BertWordPieceTokenizer's add_token calls: [BOS], [EOS]
    and <extra_id_0..> (each new token takes id len(vocab)); returns the sentinel ids as
    additional_special_tokens_ids does (vocab.get of each)."""
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.strip()] = index
    inv = {v: k for k, v in vocab.items()}
    extra = ["<extra_id_{}>".format(i) for i in range(vocab_extra_ids)]
    for token in ["[BOS]", "[EOS]"] + extra:
        if token not in vocab:
            inv[len(vocab)] = token
            vocab[token] = len(vocab)
    return vocab, inv, [vocab.get(t) for t in extra]


def masked_lm(tokens, target, rs, vocab, inv):
    """_create_masked_lm_predictions with T5's options; returns (tokens, masked_spans)."""
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
    ngrams = [[candidates[idx:idx + n] for n in nvals] for idx in range(len(candidates))]
    rs.shuffle(ngrams)
    out = list(tokens)
    masked, masked_set, spans = [], set(), []
    for grams in ngrams:
        if len(masked) >= n_maskings:
            break
        if not grams:
            continue
        n = min(rs.geometric(GEOMETRIC_P), MAX_NGRAM)
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
            out[i] = mask  # T5's _get_token_mask: always [MASK]
            masked.append((i, tokens[i]))
        spans.append((indices, [tokens[i] for i in indices]))
    assert len(masked) <= n_maskings
    rs.shuffle(ngrams)  # Megatron's second shuffle: no effect on the sample
    return out, sorted(spans, key=lambda x: x[0][0])


def t5_sample(sentences, target, encoder_length, decoder_length, seed, vocab, inv, sentinel_ids):
    """T5MaskedWordPieceDataset.__getitem__ after the sample index lookup."""
    rs = numpy.random.RandomState(seed=seed)
    tokens = [t for s in sentences for t in s][:target]
    tokens, spans = masked_lm(tokens, target, rs, vocab, inv)
    sentinels = deque(sentinel_ids)
    encoder, decoder_in, decoder_out = [], [vocab["[BOS]"]], []
    begin = 0
    for indices, labels in spans:
        sentinel = sentinels.popleft()
        encoder.extend(tokens[begin:indices[0]])
        encoder.append(sentinel)
        decoder_in.append(sentinel)
        decoder_in.extend(labels)
        decoder_out.append(sentinel)
        decoder_out.extend(labels)
        begin = indices[-1] + 1
    encoder.extend(tokens[begin:])
    decoder_out.append(vocab["[EOS]"])
    n_enc, n_dec = len(encoder), len(decoder_in)
    assert n_enc <= encoder_length and n_dec <= decoder_length
    pad = vocab["[PAD]"]
    loss_mask = numpy.zeros(decoder_length, dtype=numpy.int64)
    loss_mask[:n_dec] = 1
    return {"encoder": encoder + [pad] * (encoder_length - n_enc),
            "decoder": decoder_in + [pad] * (decoder_length - n_dec),
            "labels": decoder_out + [-1] * (decoder_length - n_dec),
            "loss_mask": loss_mask.tolist(), "encoder_length": n_enc, "decoder_length": n_dec,
            "num_spans": len(spans)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--encoder-seq-length", type=int, default=128)
    # 1 + 2 * floor(0.15 * 126) = 37 decoder positions at most: Megatron's assert never fires.
    parser.add_argument("--decoder-seq-length", type=int, default=40)
    parser.add_argument("--vocab-extra-ids", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    vocab, inv, sentinel_ids = megatron_vocab(args.vocab, args.vocab_extra_ids)
    words = [i for t, i in vocab.items() if not t.startswith("[") and not t.startswith("<extra")]
    rng = random.Random(11)
    samples = []
    max_target = args.encoder_seq_length - 2  # _build_sample_index(sequence_length - 2, 1)
    for idx in range(args.samples):
        sentences = []
        for _ in range(rng.randint(1, 6)):
            sentence = []
            for _ in range(rng.randint(1, 40)):
                r = rng.random()
                sentence.append(vocab["[SEP]"] if r < 0.01 else vocab["[CLS]"] if r < 0.015
                                else rng.choice(words))
            sentences.append(sentence)
        target = max_target
        if rng.random() < 0.2:
            target = rng.randint(2, max_target)
        sample_seed = (args.seed + idx) % 2**32
        s = t5_sample(sentences, target, args.encoder_seq_length, args.decoder_seq_length,
                      sample_seed, vocab, inv, sentinel_ids)
        s.update({"sentences": sentences, "target_length": target, "sample_seed": sample_seed})
        samples.append(s)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"vocab": os.path.basename(args.vocab), "vocab_extra_ids": args.vocab_extra_ids,
                   "vocab_size": len(vocab), "bos": vocab["[BOS]"], "eos": vocab["[EOS]"],
                   "sentinel_ids": sentinel_ids,
                   "encoder_seq_length": args.encoder_seq_length,
                   "decoder_seq_length": args.decoder_seq_length, "seed": args.seed,
                   "numpy": numpy.__version__, "samples": samples}, f)
    print(f"wrote {len(samples)} samples to {args.output}")


if __name__ == "__main__":
    main()
