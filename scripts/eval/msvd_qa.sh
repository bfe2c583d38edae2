#!/usr/bin/env bash
# msvd_qa phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/msvd_qa.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/msvd_qa.yaml "$@"
