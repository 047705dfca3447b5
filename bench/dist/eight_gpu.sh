#!/usr/bin/env bash
# Issue 9 on one 8-GPU machine, in one call:
#   1. the 1.3B GPT, 50 steps at TP=2 x PP=2 x DP=2 (sequence parallelism, distributed optimizer,
#      bf16), against the same job on one GPU with gradient accumulation to the same global batch,
#      from the same initialisation: loss sequences compared within bf16 tolerance (2e-2);
#   2. the 3D run saves a checkpoint at its last step; one GPU (TP=1 x PP=1) loads it and trains
#      on: its first losses are compared with the 3D run continuing (a second 3D run that loads
#      the same checkpoint);
#   3. weak scaling: tokens/s per GPU for DP = 1, 2, 4, 8 (1.3B, micro-batch 8, overlapped
#      gradient reduction) and TP=8 on a ~7B GPT (32 layers, hidden 4096, 32 heads), with MFU and
#      rank 0's memory (bench/dist rows for bench/RESULTS.md).
#
#   bench/dist/eight_gpu.sh SHARDLM_BINARY OUT_DIR
#   DEVICE=cpu MODEL=tiny bench/dist/eight_gpu.sh ...   # the same flow on 8 CPU ranks (plumbing)
set -uo pipefail
BIN="$1"; OUT="$2"
mkdir -p "$OUT"; : >"$OUT/scaling.jsonl"
export NCCL_NVLS_ENABLE=0  # NVLink multicast must stay off on the shared machines
DEV="${DEVICE:-cuda}"
rc=0
if [[ "${MODEL:-1.3B}" == tiny ]]; then
  GPT="--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 256"
  BIG="--num-layers 2 --hidden-size 64 --num-attention-heads 8 --seq-length 32 --vocab-size 256"
  MBS=2; ITERS=${ITERS:-6}; TOL=1e-4
else
  GPT="--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048
    --max-position-embeddings 2048 --vocab-size 50257"
  BIG="--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --seq-length 2048
    --max-position-embeddings 2048 --vocab-size 50257"
  MBS=8; ITERS=${ITERS:-50}; TOL=2e-2
fi
# CPU ranks: the CPU's mixed precision (fp32 compute, fp64 master weights), the --bf16 code paths.
HALF="--main-params-dtype fp64"; [[ $DEV == cuda ]] && HALF="--bf16"
# Global batch 4 micro-batches of the 3D layout's DP=2 ranks: 8 x MBS sequences.
GBS=$((8 * MBS))
WARM=$(( ITERS >= 10 ? 5 : 1 ))
TRAIN="train --mock-data $GPT --micro-batch-size $MBS --global-batch-size $GBS $HALF
  --hidden-dropout 0 --attention-dropout 0 --lr 1e-4 --min-lr 1e-5 --lr-warmup-iters $WARM
  --clip-grad 1.0 --seed 1234 --log-interval 1 --eval-interval 1000000 --eval-iters 0
  --device $DEV"
LAYOUT3D="--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --sequence-parallel
  --use-distributed-optimizer --overlap-grad-reduce"
launch() { echo "$BIN launch --nproc-per-node $1 --master-port 0 --device $DEV --"; }

LOGS="$(dirname "$0")/../../tools/loss_logs.py"
compare() {  # compare NAME REFERENCE_LOG LOG TOLERANCE: the iterations LOG trained
  python3 "$LOGS" iterations "$@"
}

echo "=== 1. one GPU, gradient accumulation ($(date +%T))"
timeout 1200 $BIN $TRAIN --train-iters "$ITERS" >"$OUT/one_gpu.log" 2>&1; echo "exit $?"
echo "=== 1. TP=2 x PP=2 x DP=2 on 8 GPUs ($(date +%T))"
CKPT="$OUT/ckpt_3d"; rm -rf "$CKPT"
# shellcheck disable=SC2046
timeout 1200 $(launch 8) $TRAIN $LAYOUT3D --train-iters "$ITERS" --save "$CKPT" \
  --save-interval "$ITERS" >"$OUT/three_d.log" 2>&1; echo "exit $?"
grep -m2 -E "^distributed:|> pipeline:" "$OUT/three_d.log"
compare "TP2xPP2xDP2 (8 GPUs) vs 1 GPU" "$OUT/one_gpu.log" "$OUT/three_d.log" "$TOL" || rc=1

echo "=== 2. the 3D checkpoint resumed on one GPU vs on the 3D layout ($(date +%T))"
MORE=$((ITERS + 5))
timeout 1200 $BIN $TRAIN --train-iters "$MORE" --load "$CKPT" >"$OUT/resume_one_gpu.log" 2>&1
echo "exit $?"
# shellcheck disable=SC2046
timeout 1200 $(launch 8) $TRAIN $LAYOUT3D --train-iters "$MORE" --load "$CKPT" \
  >"$OUT/resume_three_d.log" 2>&1; echo "exit $?"
if grep -q "loaded checkpoint" "$OUT/resume_one_gpu.log" && grep -q "loaded checkpoint" "$OUT/resume_three_d.log"; then
  compare "3D checkpoint resumed on 1 GPU vs resumed on TP2xPP2xDP2" "$OUT/resume_three_d.log" \
    "$OUT/resume_one_gpu.log" "$TOL" || rc=1
else
  echo "FAIL a resumed run did not load the 3D checkpoint (see resume_*.log)"; rc=1
fi

echo "=== 3. weak scaling ($(date +%T))"
BENCH="bench $GPT --micro-batch-size $MBS $HALF --hidden-dropout 0 --attention-dropout 0
  --device $DEV --bench-steps ${STEPS:-10} --warmup-steps ${WARMUP:-3}"
for dp in 1 2 4 8; do
  echo "--- DP=$dp"
  cmd="$BIN"; [[ $dp -gt 1 ]] && cmd=$(launch $dp)
  # shellcheck disable=SC2086
  timeout 900 $cmd $BENCH --global-batch-size $((dp * MBS)) --overlap-grad-reduce \
    --label "dp$dp" --result-jsonl "$OUT/scaling.jsonl" >"$OUT/bench_dp$dp.log" 2>&1
  echo "exit $?"; grep -E "^> tokens/s|rror" "$OUT/bench_dp$dp.log" | head -2 | cut -c1-250
done
echo "--- TP=8, ~7B"
# shellcheck disable=SC2046
timeout 900 $(launch 8) bench $BIG --micro-batch-size $MBS $HALF --hidden-dropout 0 \
  --attention-dropout 0 --device $DEV --bench-steps ${STEPS:-10} --warmup-steps ${WARMUP:-3} \
  --global-batch-size $MBS --tensor-model-parallel-size 8 --sequence-parallel --label tp8_7b \
  --result-jsonl "$OUT/scaling.jsonl" >"$OUT/bench_tp8.log" 2>&1
echo "exit $?"; grep -E "^> tokens/s|rror" "$OUT/bench_tp8.log" | head -2 | cut -c1-250

python3 "$LOGS" scaling-table "$OUT/scaling.jsonl" dp1
exit $rc
