#!/usr/bin/env bash
# anet_qa phase 1 (docs/evaluation.md), from any directory:
#   MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/anet_qa.sh [key=value ...]
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$HERE/_launch.sh" "$HERE/../../configs/eval/anet_qa.yaml" "$@"
