#!/usr/bin/env bash
# mvbench phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/mvbench.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/mvbench.yaml "$@"
