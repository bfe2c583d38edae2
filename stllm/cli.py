"""Command line: `python -m stllm <command> [args]` -> the owning module's `main(argv)`.

This table is the only place that names the commands (a plain dict; modules are imported lazily, so
`python -m stllm score` does not import torch). A command may be two words (`bench data`, `data check`).
An error that is the user's input (stllm.errors.StllmError) ends the command with one line and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from stllm.errors import StllmError

# command -> (module whose main(argv) runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("stllm.quickstart.run", "miniature reproduction of the paper's claim on a CPU"),
    "convert": ("stllm.checkpoints.convert", "convert original ST-LLM / LAVIS / Vicuna / HF InstructBLIP weights"),
    "inspect": ("stllm.checkpoints.inspect", "describe a model folder: inspect MODEL_DIR"),
    "data check": ("stllm.data.check", "check a data setup before training: data check CONFIG"),
    "train": ("stllm.train.run", "train a recipe: train CONFIG [key=value ...]"),
    "eval": ("stllm.eval.predict", "benchmark phase 1, write predictions.jsonl: eval CONFIG --model DIR"),
    "score": ("stllm.eval.score", "benchmark phase 2, score predictions: score PREDICTIONS"),
    "chat": ("stllm.demo.terminal", "chat about a video in the terminal: chat --model DIR --video PATH"),
    "web": ("stllm.demo.web", "chat about a video on a local web page: web --model DIR"),
    "tiny-model": ("stllm.testing", "write a tiny random model + tokenizers (CPU demos): tiny-model --out DIR"),
    "toy-data": ("stllm.quickstart.toydata", "write a small drawn training set: toy-data OUT"),
    "bench data": ("stllm.data.bench", "decode + sample + transform throughput against the raw decoder"),
    "bench convert": ("stllm.checkpoints.bench", "full-size checkpoint conversion: peak memory and time"),
    "bench train": ("stllm.train.bench", "training step time without masking / masking / masking + MVM"),
    "bench eval": ("stllm.eval.bench", "eval loop: wall vs decode + model time, items/s by batch, 16/64 frames"),
    "bench gpu": ("stllm.bench_gpu", "full-size numerics, training, evaluation and chat figures on one GPU"),
    "estimate": ("stllm.train.estimate", "memory per GPU and settings for a recipe: estimate CONFIG --gpus N"),
}


def _usage() -> str:
    lines = ["usage: python -m stllm <command> [args]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def resolve(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """argv -> (command, its arguments): two-word commands first, then one-word ones; None if unknown."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", list(argv[2:])
    if argv and argv[0] in COMMANDS:
        return argv[0], list(argv[1:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    found = resolve(args)
    if found is None:
        group = [name for name in COMMANDS if name.split(" ")[0] == args[0]]
        what = " ".join(args[:2]) if group else args[0]
        hint = f" (choose: {', '.join(group)})" if group else ""
        print(f"stllm: unknown command {what!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    name, rest = found
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except StllmError as err:  # the user's input: one line naming the file/key and the problem, no traceback
        print(f"stllm {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stllm {name}: interrupted", file=sys.stderr)
        return 130
