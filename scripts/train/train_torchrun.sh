#!/usr/bin/env bash
# Single node, all local GPUs (or NPROC): scripts/train/train_torchrun.sh CONFIG [key=value ...]
# e.g. scripts/train/train_torchrun.sh configs/train/stllm_qa.yaml data.data_root=/data
set -euo pipefail
CONFIG="$1"; shift
NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
exec torchrun --standalone --nproc_per_node "$NPROC" -m stllm train "$CONFIG" "$@"
