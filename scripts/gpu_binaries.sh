#!/usr/bin/env bash
# Prebuilt GPU binaries for the device machine, so a short device session spends no time
# building (~110 s of a fresh machine's budget). This machine's nvcc builds the same sm_90a code
# the device would; the device still needs .deps (scripts/gpu_deps.sh) for the shared libraries.
#   scripts/gpu_binaries.sh pack BUILD_DIR   (here)  -> .gpubin/bin.tar.xz (stripped; ~17 MB for
#                                                      shardlm, ops/train GPU tests, ops_bench)
#   scripts/gpu_binaries.sh unpack DEST      (there) -> DEST/shardlm, DEST/ops_gpu_tests, ...
# .gpubin/ is git-ignored; device calls carry it.
set -euo pipefail
cd "$(dirname "$0")/.."
BINARIES=(shardlm tests/ops_gpu_tests tests/train_gpu_tests ops_bench)
case "${1:-}" in
  pack)
    build="${2:?usage: scripts/gpu_binaries.sh pack BUILD_DIR}"
    stage=$(mktemp -d)
    for b in "${BINARIES[@]}"; do
      [[ -x "$build/$b" ]] || { echo "missing $build/$b: build it first (ninja -C $build ${b##*/})" >&2; exit 1; }
      cp "$build/$b" "$stage/"
    done
    strip "$stage"/*
    mkdir -p .gpubin
    tar -cJf .gpubin/bin.tar.xz -C "$stage" .
    rm -rf "$stage"
    ls -la .gpubin/bin.tar.xz
    ;;
  unpack)
    dest="${2:?usage: scripts/gpu_binaries.sh unpack DEST}"
    mkdir -p "$dest"
    tar -xJf .gpubin/bin.tar.xz -C "$dest"
    ;;
  *)
    echo "usage: scripts/gpu_binaries.sh pack BUILD_DIR | unpack DEST" >&2
    exit 2
    ;;
esac
