#!/usr/bin/env bash
# The two-GPU acceptance checks of the distributed issues (5, 6, 7), on a 2-GPU machine. Registered
# with ctest as MultiGpu.LaunchScript (label gpu): it exits 77 (skipped) with fewer than two GPUs
# (with BACKEND=gloo, below one: ctest SharedGpu.LaunchScriptGloo).
# Needs a CUDA build of shardlm (SHARDLM=path/to/shardlm, default ./build/shardlm).
#   tests/dist/launch_gpu/run.sh            # logs under $OUT (default runs/launch_gpu)
#   DEVICE=cpu tests/dist/launch_gpu/run.sh # checks 1-5 and 7 with CPU ranks (a tiny PP model; the
#                                           # bf16 checks in fp32 compute / fp64 master precision)
#   BACKEND=gloo tests/dist/launch_gpu/run.sh  # every check with --distributed-backend gloo: host
#                                           # sockets, GPU tensors staged through host memory, so
#                                           # it runs on ONE GPU (both processes share it; the tiny
#                                           # PP model, no bubble timing). Everything but NCCL.
# Checks, each printing PASS/FAIL:
#   1. `shardlm launch --nproc-per-node 2 --device cuda -- train ...` (DP=2 over NCCL) logs the
#      one-GPU run's losses (fp32; relative difference <= 1e-4: NCCL's reduction order differs
#      from the single rank's micro-batch accumulation only in rounding);
#   2. the same job under `mpirun -np 2 shardlm train ...` (Open MPI discovery);
#   3. `shardlm launch --device cpu` on the same machine (socket communicator) matches too;
#   4. bf16: TP=2, DP=2 with the distributed optimizer, and CP=2 (context parallelism) log the
#      one-GPU bf16 losses within 2e-2 relative (bf16 rounding differs between layouts);
#   5. checkpoints: a TP=2 bf16 run on two GPUs saves at iteration 10 (--exit-interval 10); one GPU
#      loads it (TP=2 -> TP=1 reshard, optimizer state included) and trains iterations 11-20,
#      whose losses match the straight one-GPU run's within 2e-2;
#   6. a rank killed at iteration 3 (SHARDLM_TEST_KILL_RANK) and one that hangs
#      (SHARDLM_TEST_HANG_RANK) end the job non-zero within --distributed-timeout-minutes,
#      with the failing rank named;
#   7. pipeline parallelism on 2 GPUs (--pipeline-model-parallel-size 2, bf16; 1f1b and
#      interleaved with 2 chunks per rank) logs the one-GPU bf16 losses within 2e-2 relative
#      (bf16 rounding differs between layouts), and prints the measured median step time next
#      to the one-GPU step time and the bubble the schedule predicts, (P-1)/(V*M) of the step.
set -uo pipefail
cd "$(dirname "$0")/../../.."
SHARDLM="${SHARDLM:-./build/shardlm}"
OUT="${OUT:-runs/launch_gpu}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # NVLink multicast must stay off on the shared machines
if [[ -d .deps/root ]]; then
  export LD_LIBRARY_PATH="$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-pthread:$PWD/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
DEV="${DEVICE:-cuda}"
GLOO=""; [[ "${BACKEND:-nccl}" == gloo ]] && GLOO="--distributed-backend gloo"
if [[ $DEV == cuda ]]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
  need=$([[ -n $GLOO ]] && echo 1 || echo 2)
  if [[ "${gpus:-0}" -lt $need ]]; then echo "SKIP: ${gpus:-0} GPU(s) visible, the checks need $need"; exit 77; fi
  HALF="--bf16"; HALF_TOL=2e-2; HALF_NAME=bf16
else
  # CPU ranks: the "bf16" checks run the CPU's mixed precision (fp32 compute, fp64 master
  # weights), the same code paths (compute copies, sharded master weights, their checkpoints).
  HALF="--main-params-dtype fp64"; HALF_TOL=1e-4; HALF_NAME="fp32 compute, fp64 master"
fi
U=$([[ $DEV == cuda ]] && echo GPU || echo "CPU rank")  # what the messages count
[[ -x "$SHARDLM" ]] || { echo "FAIL: no shardlm binary at $SHARDLM (set SHARDLM)"; exit 1; }
rc=0
TRAIN="train --mock-data --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32
  --vocab-size 256 --micro-batch-size 2 --global-batch-size 8 --lr 1e-3 --train-iters 20
  --log-interval 1 --eval-interval 10 --eval-iters 2 --seed 11 $GLOO"
[[ -n $GLOO ]] && echo "== backend gloo: the 2 ranks share ${gpus:-?} GPU(s) through host-staged sockets (NCCL not used)"

compare() {  # compare NAME REFERENCE_LOG LOG [RELATIVE_TOLERANCE, default 1e-4]: every loss
  python3 tools/loss_logs.py losses "$@"
}

compare_iterations() {  # compare_iterations NAME REFERENCE_LOG LOG TOLERANCE: LOG's training
  # iterations (at least 10) against the same iterations of the reference run.
  python3 tools/loss_logs.py iterations "$@" 10 11  # iterations 11.. (it loaded iteration 10)
}

echo "== reference: one GPU"
timeout 120 $SHARDLM $TRAIN --device $DEV >"$OUT/one_gpu.log" 2>&1 || { echo "FAIL one-GPU run"; tail -5 "$OUT/one_gpu.log"; exit 1; }

echo "== shardlm launch --nproc-per-node 2 --device $DEV"
timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 0 --device $DEV -- $TRAIN \
  >"$OUT/launch_cuda.log" 2>&1; echo "exit $?"
grep -m1 "^distributed:" "$OUT/launch_cuda.log"
compare "launch 2 ${U}s vs 1 $U" "$OUT/one_gpu.log" "$OUT/launch_cuda.log" || rc=1

echo "== mpirun -np 2 shardlm train"
if command -v mpirun >/dev/null; then
  timeout 180 mpirun --allow-run-as-root --oversubscribe -np 2 -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
    -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=29642 $SHARDLM $TRAIN --device $DEV \
    >"$OUT/mpirun_cuda.log" 2>&1; echo "exit $?"
  grep -m1 "^distributed:" "$OUT/mpirun_cuda.log"
  compare "mpirun 2 GPUs vs 1 GPU" "$OUT/one_gpu.log" "$OUT/mpirun_cuda.log" || rc=1
else
  echo "SKIP mpirun (not installed)"
fi

if [[ $DEV == cuda ]]; then  # in CPU mode check 1 is this check
  echo "== shardlm launch --nproc-per-node 2 --device cpu (socket communicator)"
  timeout 180 $SHARDLM $TRAIN --device cpu >"$OUT/one_cpu.log" 2>&1
  timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 0 --device cpu -- $TRAIN \
    >"$OUT/launch_cpu.log" 2>&1; echo "exit $?"
  compare "launch 2 CPU ranks vs 1 CPU rank" "$OUT/one_cpu.log" "$OUT/launch_cpu.log" || rc=1
fi

echo "== bf16: TP=2, DP=2 with the distributed optimizer, CP=2 vs 1 GPU"
timeout 120 $SHARDLM $TRAIN $HALF --device $DEV >"$OUT/half_one_gpu.log" 2>&1 || { echo "FAIL one-GPU bf16 run"; tail -5 "$OUT/half_one_gpu.log"; rc=1; }
for variant in "tp2:--tensor-model-parallel-size 2" "tp2_sp:--tensor-model-parallel-size 2 --sequence-parallel" \
               "dp2_distopt:--use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather" \
               "cp2:--context-parallel-size 2"; do
  name=${variant%%:*}; extra=${variant#*:}
  timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 0 --device $DEV -- $TRAIN $HALF \
    $extra >"$OUT/half_$name.log" 2>&1; echo "exit $?"
  grep -m1 "^distributed:" "$OUT/half_$name.log"
  compare "$name on 2 ${U}s vs 1 $U ($HALF_NAME)" "$OUT/half_one_gpu.log" "$OUT/half_$name.log" "$HALF_TOL" || rc=1
done

echo "== checkpoint: save at TP=2 on 2 GPUs, resume on 1 GPU"
CKPT="$OUT/ckpt_tp2"; rm -rf "$CKPT"
timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 0 --device $DEV -- $TRAIN $HALF \
  --tensor-model-parallel-size 2 --save "$CKPT" --exit-interval 10 >"$OUT/ckpt_save_tp2.log" 2>&1
echo "exit $?"; grep -E "saved checkpoint|exiting at" "$OUT/ckpt_save_tp2.log" | head -3
timeout 120 $SHARDLM $TRAIN $HALF --device $DEV --load "$CKPT" >"$OUT/ckpt_resume_one.log" 2>&1
echo "exit $?"; grep -m2 -E "loaded checkpoint|load" "$OUT/ckpt_resume_one.log"
compare_iterations "TP=2 checkpoint (2 ${U}s) resumed on 1 $U vs the straight 1-$U run" \
  "$OUT/half_one_gpu.log" "$OUT/ckpt_resume_one.log" "$HALF_TOL" || rc=1

echo "== pipeline parallel: 2 ${U}s (PP=2, $HALF_NAME) vs 1 $U"
# On GPUs big enough that a step is GPU-bound: 8 layers, hidden 1024, seq 1024, M = 32 / 4 = 8.
PP_MODEL="--num-layers 8 --hidden-size 1024 --num-attention-heads 16 --seq-length 1024
  --vocab-size 32000 --micro-batch-size 4 --global-batch-size 32"
[[ $DEV != cuda || -n $GLOO ]] && PP_MODEL="--num-layers 4 --hidden-size 64 --num-attention-heads 4
  --seq-length 32 --vocab-size 256 --micro-batch-size 2 --global-batch-size 16"
VSTAGE=$([[ $DEV == cuda && -z $GLOO ]] && echo 2 || echo 1)  # layers per virtual stage: 2 chunks per rank
PP_TRAIN="train --mock-data $PP_MODEL --lr 1e-4 --train-iters 20 --log-interval 1
  --eval-interval 10 --eval-iters 2 --seed 11 $HALF $GLOO"
step_times() {  # step_times LOG: median ms per iteration over iterations 6.. (after warm-up)
  python3 - "$1" <<'PY'
import re, statistics, sys
t = [float(x) for x in re.findall(r"elapsed time per iteration \(ms\): ([0-9.]+)", open(sys.argv[1]).read())]
print(f"{statistics.median(t[5:]):.1f}" if len(t) > 5 else "nan")
PY
}
timeout 300 $SHARDLM $PP_TRAIN --device $DEV >"$OUT/pp_one_gpu.log" 2>&1 || { echo "FAIL one-$U run"; tail -5 "$OUT/pp_one_gpu.log"; rc=1; }
one_ms=$(step_times "$OUT/pp_one_gpu.log")
for variant in "1f1b:" "interleaved:--num-layers-per-virtual-pipeline-stage $VSTAGE"; do
  name=${variant%%:*}; extra=${variant#*:}
  timeout 300 $SHARDLM launch --nproc-per-node 2 --master-port 0 --device $DEV -- $PP_TRAIN \
    --pipeline-model-parallel-size 2 $extra >"$OUT/pp2_$name.log" 2>&1; echo "exit $?"
  grep -m1 "> pipeline:" "$OUT/pp2_$name.log"
  compare "PP=2 $name on 2 ${U}s vs 1 $U" "$OUT/pp_one_gpu.log" "$OUT/pp2_$name.log" "$HALF_TOL" || rc=1
  [[ -n $GLOO ]] && continue  # ranks sharing a GPU: their step time says nothing of the bubble
  pp_ms=$(step_times "$OUT/pp2_$name.log")
  python3 - "$OUT/pp2_$name.log" "$one_ms" "$pp_ms" "$name" <<'PY'
import re, sys
log, one, pp, name = open(sys.argv[1]).read(), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
m = re.search(r"(\d+) stages x (\d+) chunks, (\d+) micro-batches", log)
P, V, M = (int(x) for x in m.groups()) if m else (2, 1, 8)
bubble = (P - 1) / (V * M)
ideal = one / P * (1 + bubble)  # perfect split of the work plus the schedule's idle time
print(f"INFO PP=2 {name}: step {pp:.1f} ms (1 rank {one:.1f} ms); predicted bubble (P-1)/(V*M) = "
      f"{P-1}/({V}*{M}) = {100*bubble:.1f}% of the step = {bubble*pp:.1f} ms; ideal with that "
      f"bubble {ideal:.1f} ms; speed-up {one/pp:.2f}x")
PY
done

if [[ $DEV != cuda ]]; then
  echo "(CPU mode: the fault checks run on GPUs here; tests/cli/launch_test.cc covers CPU ranks)"
  exit $rc
fi

fault() {  # fault NAME ENV... : the job must fail (bounded by the 0.25 min timeout) naming rank 1
  local name=$1; shift
  local start=$SECONDS
  env "$@" SHARDLM_TEST_FAULT_AT_ITER=3 timeout 120 $SHARDLM launch --nproc-per-node 2 \
    --master-port 0 --device cuda --grace-period 2 -- $TRAIN --distributed-timeout-minutes 0.25 \
    >"$OUT/$name.log" 2>&1
  local code=$? took=$((SECONDS - start))
  # A surviving rank (0) must name rank 1 in its own error (the launcher's lines always do).
  if [[ $code -ne 0 && $code -ne 124 ]] && grep -qE "rank 0 of 2: .*(rank 1\b|ranks \[1\])" "$OUT/$name.log"; then
    echo "PASS $name: exit $code after ${took}s"
  else
    echo "FAIL $name: exit $code after ${took}s"; rc=1
  fi
  grep -E "shardlm( launch)?:" "$OUT/$name.log" | cut -c1-300
}
echo "== fault: rank 1 killed at iteration 3 (GPU)"
fault gpu_kill SHARDLM_TEST_KILL_RANK=1
echo "== fault: rank 1 hangs at iteration 3 (GPU)"
fault gpu_hang SHARDLM_TEST_HANG_RANK=1
exit $rc
