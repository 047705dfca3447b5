#!/usr/bin/env bash
# Builds the NCCL smoke test with g++ (only base/, tensor/, ops/cuda/cuda_context.cc, dist/ are
# needed) and runs it on every GPU of this machine, torchrun-style and then through mpirun.
#   tests/dist/nccl_smoke/run.sh [nproc]
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${1:-$(nvidia-smi -L | wc -l)}
export NCCL_NVLS_ENABLE=0  # NVLink multicast must stay off on the shared machines
OUT=${OUT_DIR:-/tmp/nccl_smoke}
mkdir -p "$OUT"
SRCS="$(ls src/shardlm/base/*.cc src/shardlm/tensor/*.cc src/shardlm/dist/*.cc src/shardlm/dist/detail/*.cc) src/shardlm/ops/cuda/cuda_context.cc tests/dist/nccl_smoke/nccl_smoke_main.cc"
g++ -std=c++20 -O1 -DSHARDLM_WITH_CUDA -Isrc -I/usr/local/cuda/include $SRCS \
    -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lnccl -lpthread -o "$OUT/nccl_smoke"
echo "== torchrun-style, $N ranks"
pids=()
for ((r = 0; r < N; r++)); do
  RANK=$r WORLD_SIZE=$N LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29611 \
    "$OUT/nccl_smoke" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "== mpirun, $N ranks"
mpirun --allow-run-as-root --oversubscribe -np "$N" -x NCCL_NVLS_ENABLE -x MASTER_PORT=29612 \
  "$OUT/nccl_smoke" || rc=1
exit $rc
