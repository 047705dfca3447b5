#!/usr/bin/env bash
# Configures and builds ShardLM with the default preset (CUDA backend when nvcc is found).
# Usage: scripts/build.sh [preset]   (presets: default, cpu, debug — see CMakePresets.json)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-default}"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j"$(nproc)"
