#!/usr/bin/env bash
# msvd_qa phase 1 (docs/evaluation.md), from any directory:
#   MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/msvd_qa.sh [key=value ...]
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$HERE/_launch.sh" "$HERE/../../configs/eval/msvd_qa.yaml" "$@"
