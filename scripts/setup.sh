#!/usr/bin/env bash
# Create .venv and install stllm with everything its tests need, on a fresh machine with only Python 3.
# Installs exactly the versions of requirements-lock.txt, so a seed gives the same numbers on every fresh machine.
# Idempotent: a second run only checks the stamp and returns. CPU machines get the CPU torch wheel via
# constraints-cpu.txt; on a GPU machine set STLLM_GPU=1 to skip the CPU pin (then add flash-attn yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${STLLM_VENV:-.venv}
stamp="$VENV/.stllm-setup-stamp"
want=$(cat requirements-lock.txt requirements-test-assets.txt constraints-cpu.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Expected noise, dropped: the machine's pip config may list local indexes that lack most packages ("is ignored:
# it is neither ..."), and setuptools prints a banner for every editable install (the block from
# "BuildBackendWarning: Editable installation" to its "with strategy, WheelFile" line).
quiet_pip() { awk '/is ignored: it is neither/ {next} /BuildBackendWarning: Editable installation/ {skip=1}
                   skip && /with strategy, WheelFile/ {skip=0; next} !skip' >&2; }
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(quiet_pip); }
pip install --upgrade pip >/dev/null
# Every package at the exact version it was tested with (requirements-lock.txt); the dependencies themselves are
# declared once, in pyproject.toml. CPU machines also pin the CPU torch wheel (constraints-cpu.txt).
C=(-c requirements-lock.txt)
if [ "${STLLM_GPU:-0}" = "1" ]; then
  pip install "torch>=2.4"
else
  C+=(-c constraints-cpu.txt)
  pip install torch==2.13.0
fi
DS_BUILD_OPS=0 pip install "${C[@]}" -e ".[decord,demo,deepspeed,dev]"
# Informational: decord's manylinux2010 wheel is flagged "not supported" by pip check but imports and decodes fine.
pip check >/dev/null 2>&1 || echo "setup: pip check is not clean (decord's platform tag is a known false alarm)"
pip install --no-deps -r requirements-test-assets.txt
# Optional: Debian's Chromium for the real-browser demo test (skipped with a message where absent).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     chromium >/dev/null) || echo "setup: chromium not installed (browser test will be skipped)"
fi
echo "$want" > "$stamp"
echo "setup: done ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
