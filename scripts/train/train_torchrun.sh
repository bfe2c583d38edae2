#!/usr/bin/env bash
# Single node: [NPROC=N] [MASTER_PORT=P] scripts/train/train_torchrun.sh CONFIG [key=value ...], from any directory.
#   NPROC: processes (GPUs) to start; default every local GPU (torch.cuda.device_count(), at least 1).
#   CONFIG: a path from the current directory, or one relative to the repository root (configs/train/...).
# e.g. NPROC=4 scripts/train/train_torchrun.sh configs/train/stllm_qa.yaml data.data_root=/data
set -euo pipefail
CONFIG="${1:?usage: see the comment at the top of this script}"; shift
source "$(dirname "${BASH_SOURCE[0]}")/_config.sh"
NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
exec torchrun --standalone --nproc_per_node "$NPROC" -m stllm train "$CONFIG" "$@"
