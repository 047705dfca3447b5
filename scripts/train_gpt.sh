#!/usr/bin/env bash
# Command 1 of the README: install dependencies, build, tokenise real text (Moby Dick, GPT-2
# BPE, Megatron's .bin/.idx format) and train a small GPT on it, printing Megatron-style log
# lines. Runs on the GPU when there is one (and this build has the CUDA backend), else on the
# CPU. Extra arguments go to `shardlm train` and win over the example config, e.g.
#   scripts/train_gpt.sh --train-iters 50 --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARDLM_DATA:-../shared/data}"
if [[ ! -f "$DATA/corpus/moby_dick.jsonl" ]]; then
  echo "train_gpt: $DATA/corpus/moby_dick.jsonl not found; set SHARDLM_DATA to the shared data" \
       "folder (it holds corpus/ and gpt2/)" >&2
  exit 2
fi
bash scripts/setup.sh
bash scripts/build.sh default
mkdir -p runs/data
if [[ ! -f runs/data/moby_dick_text_document.idx ]]; then
  ./build/shardlm preprocess --input "$DATA/corpus/moby_dick.jsonl" --json-keys text \
      --output-prefix runs/data/moby_dick --tokenizer-type GPT2BPETokenizer \
      --vocab-file "$DATA/gpt2/gpt2-vocab.json" --merge-file "$DATA/gpt2/gpt2-merges.txt" \
      --append-eod --workers 2
fi
exec ./build/shardlm train --config examples/gpt_small_moby_dick.yaml \
    --vocab-file "$DATA/gpt2/gpt2-vocab.json" --merge-file "$DATA/gpt2/gpt2-merges.txt" "$@"
