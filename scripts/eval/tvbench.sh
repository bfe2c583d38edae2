#!/usr/bin/env bash
# tvbench phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/tvbench.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/tvbench.yaml "$@"
