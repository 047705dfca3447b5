#!/usr/bin/env bash
# How long a checkpoint save takes for the 1.3B GPT (issue 7), synchronous vs --async-save, on
# one GPU: 6 bf16 training steps on mock data, saving at iterations 2, 4 and 6 (parameters + Adam
# moments, fp32: ~15.8 GB per checkpoint). Prints the trainer's save lines (blocking seconds,
# and for async the background write time) and the step times around the saves.
#
#   bench/ckpt/save_timing.sh SHARDLM_BINARY CKPT_DIR OUT_DIR
set -uo pipefail
BIN="$1"; DIR="$2"; OUT="$3"
mkdir -p "$OUT"
MODEL="--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048
  --max-position-embeddings 2048 --micro-batch-size 8 --global-batch-size 8 --vocab-size 50257
  --hidden-dropout 0 --attention-dropout 0 --bf16 --device cuda --lr 3e-4 --mock-data
  --train-iters 6 --log-interval 1 --eval-iters 0 --save-interval 2 --keep-last-checkpoints 1"
for mode in ${MODES:-sync async}; do  # MODES="sync" or "async" for one of them
  rm -rf "$DIR"; mkdir -p "$DIR"
  extra=""; [[ $mode == async ]] && extra="--async-save"
  echo "=== $mode ($(date +%T))"
  # shellcheck disable=SC2086
  timeout 240 "$BIN" train $MODEL --save "$DIR" $extra >"$OUT/save_$mode.log" 2>&1
  echo "exit $?"
  grep -E "checkpoint|asynchronous save|elapsed time per iteration|startup" "$OUT/save_$mode.log" \
    | sed -E 's/\| (learning rate|global batch size|lm loss|grad norm|number of [a-z ]+):[^|]*//g' | cut -c1-200
  du -sh "$DIR" 2>/dev/null
done
rm -rf "$DIR"
