"""Command line: `python -m stllm <command> [args]` -> the command module's `main(argv)`.

Each command lives in the module that owns it; this table is the only place that names them (a plain dict,
imported lazily so that `python -m stllm score` does not import torch-heavy training code).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("stllm.train.run", "train a recipe: train CONFIG [key=value ...]"),
    "eval": ("stllm.eval.run", "benchmark phase 1, write predictions.jsonl: eval CONFIG --model DIR [key=value ...]"),
    "score": ("stllm.eval.score", "benchmark phase 2, score predictions: score PREDICTIONS [...]"),
    "convert": ("stllm.checkpoints.convert", "convert original ST-LLM / LAVIS / Vicuna / HF InstructBLIP weights"),
    "inspect": ("stllm.checkpoints.inspect", "describe a model directory: inspect MODEL_DIR"),
    "data": ("stllm.data.check", "check a data setup before training: data check CONFIG"),
    "bench": ("stllm.bench", "benchmarks that print figures: bench {data,convert,train,...}"),
    "quickstart": ("stllm.quickstart", "miniature reproduction of the paper's claim on CPU"),
    "tiny-model": ("stllm.testing", "write a tiny random model + tokenizers (CPU demos): tiny-model --out DIR"),
}


def _usage() -> str:
    lines = ["usage: python -m stllm <command> [args]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stllm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)
