#!/usr/bin/env bash
# Multi-process launch on a 2-GPU machine (for the lead; not part of ctest). Needs a CUDA build
# of shardlm (scripts/gpu_check.sh builds ./build; or set SHARDLM=path/to/shardlm).
#   tests/dist/launch_gpu/run.sh            # logs under $OUT (default runs/launch_gpu)
# Checks, each printing PASS/FAIL:
#   1. `shardlm launch --nproc-per-node 2 --device cuda -- train ...` (DP=2 over NCCL) logs the
#      one-GPU run's losses (fp32; relative difference <= 1e-4: NCCL's reduction order differs
#      from the single rank's micro-batch accumulation only in rounding);
#   2. the same job under `mpirun -np 2 shardlm train ...` (Open MPI discovery);
#   3. `shardlm launch --device cpu` on the same machine (socket communicator) matches too;
#   4. a rank killed at iteration 3 (SHARDLM_TEST_KILL_RANK) and one that hangs
#      (SHARDLM_TEST_HANG_RANK) end the job non-zero within --distributed-timeout-minutes,
#      with the failing rank named.
set -uo pipefail
cd "$(dirname "$0")/../../.."
SHARDLM="${SHARDLM:-./build/shardlm}"
OUT="${OUT:-runs/launch_gpu}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # NVLink multicast must stay off on the shared machines
if [[ -d .deps/root ]]; then
  export LD_LIBRARY_PATH="$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-pthread:$PWD/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
rc=0
TRAIN="train --mock-data --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32
  --vocab-size 256 --micro-batch-size 2 --global-batch-size 8 --lr 1e-3 --train-iters 20
  --log-interval 1 --eval-interval 10 --eval-iters 2 --seed 11"

compare() {  # compare NAME REFERENCE_LOG LOG
  python3 - "$2" "$3" "$1" <<'PY'
import re, sys
def losses(p):
    return [float(m.group(2)) for m in re.finditer(r"lm loss( value)?: ([0-9.E+-]+)", open(p).read())]
a, b, name = losses(sys.argv[1]), losses(sys.argv[2]), sys.argv[3]
ok = len(a) == len(b) and len(a) > 0 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b))
worst = max((abs(x - y) / abs(x) for x, y in zip(a, b)), default=float("nan"))
print(("PASS" if ok else "FAIL"), name, f"({len(b)} losses vs {len(a)}, worst relative difference {worst:.2e})")
sys.exit(0 if ok else 1)
PY
}

echo "== reference: one GPU"
timeout 120 $SHARDLM $TRAIN --device cuda >"$OUT/one_gpu.log" 2>&1 || { echo "FAIL one-GPU run"; tail -5 "$OUT/one_gpu.log"; exit 1; }

echo "== shardlm launch --nproc-per-node 2 --device cuda"
timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 29641 --device cuda -- $TRAIN \
  >"$OUT/launch_cuda.log" 2>&1; echo "exit $?"
grep -m1 "^distributed:" "$OUT/launch_cuda.log"
compare "launch 2 GPUs vs 1 GPU" "$OUT/one_gpu.log" "$OUT/launch_cuda.log" || rc=1

echo "== mpirun -np 2 shardlm train"
if command -v mpirun >/dev/null; then
  timeout 180 mpirun --allow-run-as-root --oversubscribe -np 2 -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
    -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=29642 $SHARDLM $TRAIN --device cuda \
    >"$OUT/mpirun_cuda.log" 2>&1; echo "exit $?"
  grep -m1 "^distributed:" "$OUT/mpirun_cuda.log"
  compare "mpirun 2 GPUs vs 1 GPU" "$OUT/one_gpu.log" "$OUT/mpirun_cuda.log" || rc=1
else
  echo "SKIP mpirun (not installed)"
fi

echo "== shardlm launch --nproc-per-node 2 --device cpu (socket communicator)"
timeout 180 $SHARDLM $TRAIN --device cpu >"$OUT/one_cpu.log" 2>&1
timeout 180 $SHARDLM launch --nproc-per-node 2 --master-port 29643 --device cpu -- $TRAIN \
  >"$OUT/launch_cpu.log" 2>&1; echo "exit $?"
compare "launch 2 CPU ranks vs 1 CPU rank" "$OUT/one_cpu.log" "$OUT/launch_cpu.log" || rc=1

fault() {  # fault NAME ENV... : the job must fail (bounded by the 0.25 min timeout) naming rank 1
  local name=$1; shift
  local start=$SECONDS
  env "$@" SHARDLM_TEST_FAULT_AT_ITER=3 timeout 120 $SHARDLM launch --nproc-per-node 2 \
    --master-port 29644 --device cuda --grace-period 2 -- $TRAIN --distributed-timeout-minutes 0.25 \
    >"$OUT/$name.log" 2>&1
  local code=$? took=$((SECONDS - start))
  if [[ $code -ne 0 && $code -ne 124 ]] && grep -q "rank 1" "$OUT/$name.log"; then
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
