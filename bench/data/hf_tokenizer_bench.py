"""Hugging Face side of the GPT-2 BPE encoding benchmark (bench/data/tokenizer_bench.cc is ours).

Encodes every document of the shared corpora with the `tokenizers` library's byte-level BPE on
ONE thread (RAYON_NUM_THREADS=1, one document at a time) and prints MB/s, the same measure as
tokenizer_bench. Usage: RAYON_NUM_THREADS=1 python3 bench/data/hf_tokenizer_bench.py SHARED_DATA_DIR
"""
import json
import os
import sys
import time

import tokenizers

shared = sys.argv[1]
tok = tokenizers.ByteLevelBPETokenizer(os.path.join(shared, "gpt2", "gpt2-vocab.json"),
                                       os.path.join(shared, "gpt2", "gpt2-merges.txt"),
                                       add_prefix_space=False)
print("tokenizers", tokenizers.__version__, "RAYON_NUM_THREADS", os.environ.get("RAYON_NUM_THREADS"))
for corpus in ("moby_dick", "austen", "kjv_bible"):
    with open(os.path.join(shared, "corpus", corpus + ".jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ntok = sum(len(tok.encode(d).ids) for d in docs)
        best = min(best, time.perf_counter() - start)
    print("%s: %.2f MB, %d tokens, HF tokenizers encode: %.2f MB/s (1 thread)"
          % (corpus, nbytes / 1e6, ntok, nbytes / 1e6 / best))
