#!/usr/bin/env bash
# Multi-node: run on every node with the same NNODES, MASTER_ADDR, MASTER_PORT and its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 scripts/train/train_multinode.sh CONFIG [key=value ...]
# NPROC: processes (GPUs) per node, default every local GPU. Runs from any directory (CONFIG as in train_torchrun.sh).
# Keep the global batch at 128: per_device_train_batch_size x gradient_accumulation_steps x GPUs (docs/original.md §5.3).
set -euo pipefail
CONFIG="${1:?usage: see the comment at the top of this script}"; shift
source "$(dirname "${BASH_SOURCE[0]}")/_config.sh"
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" -m stllm train "$CONFIG" "$@"
