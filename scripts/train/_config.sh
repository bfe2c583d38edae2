#!/usr/bin/env bash
# Sourced by the training launchers: resolve CONFIG so the scripts run from any directory. A path that exists from
# the current directory is taken as is; otherwise one relative to the repository root (configs/train/...).
_stllm_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ ! -e "$CONFIG" ] && [ -e "$_stllm_repo/$CONFIG" ]; then
  CONFIG="$_stllm_repo/$CONFIG"
fi
