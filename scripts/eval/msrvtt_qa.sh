#!/usr/bin/env bash
# msrvtt_qa phase 1 (docs/evaluation.md). MODEL=dir DATA=folder [NGPU=8|1] scripts/eval/msrvtt_qa.sh [key=value ...]
exec "$(dirname "$0")/_launch.sh" configs/eval/msrvtt_qa.yaml "$@"
