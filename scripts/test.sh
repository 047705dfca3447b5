#!/usr/bin/env bash
# Command 2 of the README (and exactly what .ci/run runs): install dependencies, build, and run
# the whole CPU test suite. GPU tests (label gpu) run on a GPU machine: scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh default
ctest --preset default
