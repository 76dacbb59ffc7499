#!/usr/bin/env bash
# Installs everything Kiln needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang libclang-rt-14-dev nasm
  # libraries
  libcli11-dev nlohmann-json3-dev libfmt-dev libzstd-dev zlib1g-dev libdeflate-dev
  libssl-dev libnbd-dev liburing-dev libzydis-dev libxbyak-dev libcapstone-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev time xxd jq socat e2fsprogs util-linux binutils openssl python3 bc
  # the QEMU tools Kiln is checked against
  qemu-utils libnbd-bin nbdkit qemu-system-x86 qemu-guest-agent
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
