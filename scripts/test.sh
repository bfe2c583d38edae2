#!/usr/bin/env bash
# Every check CI runs, in order: lint, format, types, then all test tiers (fast, slow end-to-end; gpu where CUDA is).
# Needs the venv of scripts/setup.sh. Development: `.venv/bin/python -m pytest -q -m "not slow"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
$V/ruff check stllm tests demo.py demo_gradio.py
$V/ruff format --check stllm tests demo.py demo_gradio.py
$V/pyright
$V/python -m pytest -q -m "" "$@"
