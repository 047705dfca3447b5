#!/usr/bin/env bash
# Two halves of getting Debian libraries onto the GPU machine (no -dev packages, no network):
#   scripts/gpu_deps.sh download   (here, on a Debian machine) -> .deps/debs/*.deb  (~14 MB)
#   scripts/gpu_deps.sh unpack     (there)                      -> .deps/root/usr/...
# CMake finds .deps/root automatically. .deps/ is git-ignored; device calls carry .deps/debs.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libopenblas0 libgfortran5
          libcli11-dev nlohmann-json3-dev libyaml-cpp-dev libyaml-cpp0.7 libgtest-dev
          libsentencepiece-dev libsentencepiece0)
case "${1:-}" in
  download)
    mkdir -p .deps/debs
    (cd .deps/debs && apt-get download "${PACKAGES[@]}")
    ;;
  unpack)
    mkdir -p .deps/root
    for deb in .deps/debs/*.deb; do dpkg-deb -x "$deb" .deps/root; done
    ;;
  *)
    echo "usage: scripts/gpu_deps.sh download|unpack" >&2
    exit 2
    ;;
esac
