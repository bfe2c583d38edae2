#!/usr/bin/env bash
# vcgbench phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/vcgbench.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/vcgbench.yaml "$@"
