#!/usr/bin/env bash
# Issue 5's two-GPU benchmark: the 1.3B GPT (8x2048 per micro-batch, bf16) on one GPU and on two
# GPUs as DP=2 (overlapped bucketed gradient reduction), DP=2 with the distributed optimizer
# (overlapped reduce-scatter and parameter all-gather), TP=2, TP=2 with sequence parallelism and
# CP=2 (context parallelism: each GPU holds half of every sequence); then a mixture-of-experts
# variant (8 experts of ffn 2048, top-2) on one GPU, as DP=2 (every GPU holds all experts) and as
# EP=2 (each GPU holds 4 experts; tokens cross by all-to-all), in a second table.
# Weak scaling: each data-parallel rank keeps the one-GPU micro-batch (the global batch doubles
# with DP), TP and CP split the same global batch. Prints a markdown table: tokens/s of the job and per
# GPU, scaling efficiency (per-GPU tokens/s over the one-GPU run's), MFU per GPU and rank 0's
# memory, ready for bench/RESULTS.md.
#
#   bench/dist/scaling_2gpu.sh SHARDLM_BINARY OUT_DIR
#   DEVICE=cpu MODEL=tiny bench/dist/scaling_2gpu.sh ...   # the same flow on CPU ranks (plumbing)
set -uo pipefail
BIN="$1"; OUT="$2"
mkdir -p "$OUT"; : >"$OUT/results.jsonl"
export NCCL_NVLS_ENABLE=0  # NVLink multicast must stay off on the shared machines
DEV="${DEVICE:-cuda}"
if [[ "${MODEL:-1.3B}" == tiny ]]; then
  FLAGS="--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --vocab-size 256
    --micro-batch-size 2"
  MBS=2
else
  FLAGS="--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --seq-length 2048
    --max-position-embeddings 2048 --vocab-size 50257 --micro-batch-size 8"
  MBS=8
fi
# CPU ranks: the CPU's mixed precision (fp32 compute, fp64 master weights), the --bf16 code paths.
if [[ $DEV == cuda ]]; then FLAGS="$FLAGS --bf16"; else FLAGS="$FLAGS --main-params-dtype fp64"; fi
COMMON="$FLAGS --hidden-dropout 0 --attention-dropout 0 --device $DEV --lr 3e-4 --clip-grad 1.0
  --bench-steps ${STEPS:-20} --warmup-steps ${WARMUP:-5}"

plan() {  # plan NAME RANKS GLOBAL_BATCH PLAN_FLAGS...: the planner's estimate of that layout
  local name=$1 ranks=$2 gbs=$3; shift 3
  # shellcheck disable=SC2086
  "$BIN" plan $FLAGS --hidden-dropout 0 --attention-dropout 0 --global-batch-size "$gbs" \
    --num-gpus "$ranks" --top 1 --json "$OUT/plan_$name.json" "$@" >"$OUT/plan_$name.log" 2>&1 \
    || { echo "plan $name failed:"; tail -2 "$OUT/plan_$name.log"; }
}

run() {  # run NAME RANKS GLOBAL_BATCH EXTRA_FLAGS...
  local name=$1 ranks=$2 gbs=$3; shift 3
  echo "=== $name ($(date +%T))"
  local launch=""
  [[ $ranks -gt 1 ]] && launch="launch --nproc-per-node $ranks --master-port 0 --device $DEV --"
  # shellcheck disable=SC2086
  timeout 600 "$BIN" $launch bench $COMMON --global-batch-size "$gbs" --label "$name" \
    --result-jsonl "${RESULTS:-$OUT/results.jsonl}" "$@" >"$OUT/$name.log" 2>&1
  echo "exit $?"; grep -E "^> tokens/s|memory plan|master weights|rror" "$OUT/$name.log" | head -4 | cut -c1-300
}
# The same layouts for the planner: every layout flag fixed (recompute none is its fastest).
plan one_gpu 1 "$MBS" --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1
plan dp2 2 $((2 * MBS)) --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 \
  --use-distributed-optimizer=false
plan dp2_distopt 2 $((2 * MBS)) --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 \
  --use-distributed-optimizer
plan tp2 2 "$MBS" --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 \
  --sequence-parallel=false
plan tp2_sp 2 "$MBS" --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 \
  --sequence-parallel
plan cp2 2 "$MBS" --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 \
  --context-parallel-size 2 --use-distributed-optimizer=false

run one_gpu 1 "$MBS"
run dp2 2 $((2 * MBS)) --overlap-grad-reduce
run dp2_distopt 2 $((2 * MBS)) --overlap-grad-reduce --use-distributed-optimizer --overlap-param-gather
run tp2 2 "$MBS" --tensor-model-parallel-size 2
run tp2_sp 2 "$MBS" --tensor-model-parallel-size 2 --sequence-parallel
run cp2 2 "$MBS" --context-parallel-size 2

python3 "$(dirname "$0")/../../tools/loss_logs.py" scaling-table "$OUT/results.jsonl" "" "$OUT"

MOE="--num-experts 8 --moe-router-topk 2 --moe-ffn-hidden-size 2048 --moe-aux-loss-coeff 0.01"
DISTOPT="--overlap-grad-reduce --use-distributed-optimizer --overlap-param-gather"
: >"$OUT/results_moe.jsonl"
# shellcheck disable=SC2086
RESULTS="$OUT/results_moe.jsonl" run moe_one_gpu 1 "$MBS" $MOE
# shellcheck disable=SC2086
RESULTS="$OUT/results_moe.jsonl" run moe_dp2 2 $((2 * MBS)) $MOE $DISTOPT
# shellcheck disable=SC2086
RESULTS="$OUT/results_moe.jsonl" run moe_ep2 2 $((2 * MBS)) $MOE $DISTOPT --expert-model-parallel-size 2
python3 "$(dirname "$0")/../../tools/loss_logs.py" scaling-table "$OUT/results_moe.jsonl" ""
