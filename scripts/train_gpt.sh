#!/usr/bin/env bash
# Command 1 of the README: install dependencies, build, and train a small GPT, printing
# Megatron-style log lines. Runs on the GPU when there is one (and this build has the CUDA
# backend), else on the CPU. Extra arguments are passed on to `shardlm train` and win.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh default
exec ./build/shardlm train --config examples/gpt_tiny_mock.yaml "$@"
