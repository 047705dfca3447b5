#!/usr/bin/env bash
# The one "build + GPU tests + GPU training + fixtures" script for the GPU machine (see
# ../shared/GPU-MACHINE.md). Device calls carry .deps/debs (scripts/gpu_deps.sh download) and
# .fixture-inputs (a copy of ../shared/data/{corpus,gpt2}); logs go to $OUT (default: runs/gpu).
# Each stage is time-capped so one slow stage cannot starve the others of the call's limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
stage() { echo "=== $1 ($(date +%T))"; }

stage "unpack Debian libraries"
bash scripts/gpu_deps.sh unpack
export LD_LIBRARY_PATH="$PWD/.deps/root/usr/lib/x86_64-linux-gnu/openblas-pthread:$PWD/.deps/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"

stage "configure + build"
cmake --preset default >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
timeout 330 cmake --build --preset default -j"$(nproc)" >"$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" "$OUT/build.log" | head -30; tail -5 "$OUT/build.log"; exit 1; }

stage "GPU tests (ctest -L gpu)"
timeout 120 ctest --test-dir build -L gpu --output-on-failure -j4 >"$OUT/gpu_tests.log" 2>&1
tail -4 "$OUT/gpu_tests.log"

stage "train on the GPU: mock data"
timeout 60 ./build/shardlm train --config examples/gpt_tiny_mock.yaml --device cuda \
    --train-iters 100 >"$OUT/train_mock_gpu.log" 2>&1
echo "exit $?"; grep -E "number of parameters|iteration +100/|validation loss at iteration 100" "$OUT/train_mock_gpu.log" | cut -c1-200

stage "train on the GPU: T5 on mock span corruption (bf16)"
timeout 90 ./build/shardlm train --config examples/t5_tiny_mock.yaml --device cuda --bf16 \
    --train-iters 100 >"$OUT/train_t5_mock_gpu.log" 2>&1
echo "exit $?"; grep -E "number of parameters|iteration +100/|validation loss at iteration 100" "$OUT/train_t5_mock_gpu.log" | cut -c1-200

stage "T5 sample fixture (numpy re-run of Megatron's T5 dataset; commit to tests/golden/data/t5/)"
python3 scripts/make_t5_samples_fixture.py --vocab tests/golden/data/bert/vocab-lowercase-8k.txt \
    --output "$OUT/t5_samples_fixture.json" >"$OUT/t5_fixture.log" 2>&1; echo "exit $?"

stage "train on the GPU: Moby Dick (README command 1 without setup)"
if [[ -d .fixture-inputs/corpus ]]; then
  mkdir -p runs/data
  ./build/shardlm preprocess --input .fixture-inputs/corpus/moby_dick.jsonl --json-keys text \
      --output-prefix runs/data/moby_dick --tokenizer-type GPT2BPETokenizer \
      --vocab-file .fixture-inputs/gpt2/gpt2-vocab.json --merge-file .fixture-inputs/gpt2/gpt2-merges.txt \
      --append-eod --workers 8 >/dev/null
  timeout 120 ./build/shardlm train --config examples/gpt_small_moby_dick.yaml \
      --vocab-file .fixture-inputs/gpt2/gpt2-vocab.json --merge-file .fixture-inputs/gpt2/gpt2-merges.txt \
      >"$OUT/train_moby_gpu.log" 2>&1
  echo "exit $?"; grep -E "on cuda|iteration +(10|200)/|validation loss at iteration 200" "$OUT/train_moby_gpu.log" | cut -c1-250
fi

stage "tokenizer golden fixtures (Hugging Face / sentencepiece reference)"
if [[ -d .fixture-inputs/corpus && "${SKIP_FIXTURES:-0}" != 1 ]]; then
  rm -rf /tmp/fixtures && mkdir -p /tmp/fixtures
  timeout 120 python3 tools/fixtures/make_tokenizer_fixtures.py golden --shared .fixture-inputs \
      --out /tmp/fixtures >"$OUT/fixtures.log" 2>&1; echo "exit $?"
  tar -czf "$OUT/fixtures.tgz" -C /tmp/fixtures . && ls -la /tmp/fixtures | head -20
fi
stage "done"
