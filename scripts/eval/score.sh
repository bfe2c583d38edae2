#!/usr/bin/env bash
# Phase 2: score a phase-1 output folder. MVBench/TVBench need no judge; VCGBench/QA call the judge endpoint.
# Usage: [JUDGE_BASE_URL=...] [JUDGE_MODEL=gpt-3.5-turbo] OPENAI_API_KEY=... scripts/eval/score.sh OUTPUT_DIR [key=value ...]
set -euo pipefail
OUT="${1:?usage: scripts/eval/score.sh OUTPUT_DIR [key=value ...]}"; shift
exec python -m stllm score "$OUT" --judge-base-url "${JUDGE_BASE_URL:-https://api.openai.com/v1}" \
  --judge-model "${JUDGE_MODEL:-gpt-3.5-turbo}" "$@"
