#!/usr/bin/env bash
# Installs everything the build, tests and demo need. Idempotent: a second run with nothing to do
# takes about a second. Debian -dev packages via apt; a project-local venv (.venv) holding the pinned
# torch wheel (source of LibTorch) and the pinned reference tools from scripts/requirements.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(cmake g++ make ccache pkg-config python3-venv
              libsentencepiece-dev sentencepiece nlohmann-json3-dev libyaml-cpp-dev libgtest-dev
              libpcre2-dev libutf8proc-dev
              bsdgames clang libclang-rt-14-dev
              libgloo-dev  # the gloo headers of ProcessGroupGloo.hpp (torch ships none)
              libprotobuf-dev protobuf-compiler libisal-dev zlib1g-dev  # TensorBoard events, CRC32C, .gz data
              libssl-dev  # libcrypto: SHA-256 of checkpoint files
              libjemalloc2 libtcmalloc-minimal4)  # the allocators scripts/bench_runtime.sh preloads (sft links neither)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY="${SFT_PYTHON_BOOTSTRAP:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.requirements.sha256
want="$(sha256sum scripts/requirements.txt | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$want" ]]; then
  echo "[setup] installing pinned Python packages (torch wheel provides LibTorch)"
  # --no-cache-dir: the torch and nvidia-* wheels are ~4 GiB, and a cached copy of each would double the
  # disk this step needs (a CI run once failed here with ENOSPC).
  .venv/bin/pip install -q --no-cache-dir --upgrade pip
  .venv/bin/pip install -q --no-cache-dir -r scripts/requirements.txt
  echo "$want" > "$STAMP"
fi
echo "[setup] ok"
