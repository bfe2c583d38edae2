#!/usr/bin/env bash
# mvbench phase 1 (docs/evaluation.md), from any directory:
#   MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/mvbench.sh [key=value ...]
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$HERE/_launch.sh" "$HERE/../../configs/eval/mvbench.yaml" "$@"
