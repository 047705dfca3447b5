#!/usr/bin/env bash
# Installs every Debian package ShardLM's build and tests need. Idempotent: re-running it
# installs nothing new. Needs root (or sudo) and Debian/Ubuntu.
set -euo pipefail
PACKAGES=(cmake ninja-build g++ pkg-config libopenblas-dev libcli11-dev nlohmann-json3-dev
          libyaml-cpp-dev libgtest-dev libsentencepiece-dev
          python3)  # python3: the multi-process launch test compares loss logs with it
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
