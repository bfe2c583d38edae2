#!/usr/bin/env bash
# Phase 1 launcher shared by the benchmark scripts: one process (NGPU=1) or torchrun over NGPU GPUs (default 8).
# Usage: MODEL=dir DATA=folder [NGPU=8] [MASTER_PORT=29517] scripts/eval/_launch.sh CONFIG [key=value ...]
# Runs from any directory (CONFIG, MODEL and DATA may be relative to the current one); rerun to resume.
set -euo pipefail
CONFIG="$1"; shift
: "${MODEL:?set MODEL to a model directory (python -m stllm convert ...)}"
: "${DATA:?set DATA to the benchmark folder (docs/evaluation.md lists the layout)}"
NGPU="${NGPU:-8}"
if [ "$NGPU" = 1 ]; then
  exec python -m stllm eval "$CONFIG" --model "$MODEL" data_root="$DATA" "$@"
fi
exec torchrun --nproc_per_node="$NGPU" --master_port="${MASTER_PORT:-29517}" -m stllm eval "$CONFIG" \
  --model "$MODEL" data_root="$DATA" "$@"
