#!/usr/bin/env bash
# anet_qa phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/anet_qa.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/anet_qa.yaml "$@"
