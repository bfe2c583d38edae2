#!/usr/bin/env bash
# vcgbench phase 1 (docs/evaluation.md), from any directory:
#   MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/vcgbench.sh [key=value ...]
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$HERE/_launch.sh" "$HERE/../../configs/eval/vcgbench.yaml" "$@"
