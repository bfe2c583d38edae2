#!/usr/bin/env bash
# The deepspeed launcher, as the original (docs/original.md §5.1): scripts/train/train_deepspeed.sh CONFIG [key=value ...]
# GPUS (default: all local), MASTER_PORT (default 20000, the original's) from the environment.
set -euo pipefail
CONFIG="${1:?usage: see the comment at the top of this script}"; shift
source "$(dirname "${BASH_SOURCE[0]}")/_config.sh"
GPUS="${GPUS:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
exec deepspeed --num_gpus "$GPUS" --master_port "${MASTER_PORT:-20000}" --no_local_rank --module stllm train "$CONFIG" "$@"
