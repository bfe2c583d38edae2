"""`python -m stllm quickstart`: seed -> synthetic temporal video QA -> 3 tiny models trained -> MVBench-scored table.

A miniature of the paper's central claim (ST-LLM Sec. 3-4): feeding every frame's tokens to the LLM (`all`)
answers questions that depend on time order, while pooling the frames (`mean`) cannot, and dynamic masking
with the MVM loss keeps that. The three variants differ only in what the paper varies; all go through the real
training entry point (`stllm train`) and the real evaluation harness (`stllm eval` + `stllm score`).

The paper freezes *pretrained* vision towers; a tiny model trained from scratch has none, so here the tiny
EVA and Q-Former are trained too (with a vision init range of 0.05 instead of transformers' 1e-10), and the
miniature says nothing about the paper's benchmark numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

logger = logging.getLogger(__name__)

VARIANTS = {  # name -> model overrides (what the paper varies, nothing else)
    "all": {"video_input": "all", "use_mask": False},
    "all+mask+MVM": {"video_input": "all", "use_mask": True, "mvm_decode": True, "mvm_loss_weight": 1.0},
    "mean": {"video_input": "mean", "use_mask": False},
}
FRAMES = 8  # frames the model sees (the videos have 16)
IMAGE_SIZE = 56


@dataclass
class Budget:
    train_per_task: int
    eval_per_task: int
    steps: int
    batch_size: int


FULL = Budget(train_per_task=250, eval_per_task=50, steps=400, batch_size=16)
FAST = Budget(train_per_task=8, eval_per_task=3, steps=4, batch_size=4)


def _write_yaml(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


def train_config(base_model: Path, data: Path, out: Path, overrides: dict, budget: Budget, seed: int) -> dict:
    """A training recipe for one variant (the tiny recipe's structure, towers trainable: see module doc)."""
    return {
        "model": {"preset": "tiny", "init_from": str(base_model), "freeze_vision": False, "freeze_qformer": False,
                  "num_frames": FRAMES, **overrides},
        "data": {"data_root": str(data), "anno_root": "", "image_size": IMAGE_SIZE, "mixture": "shuffled",
                 "datasets": [{"name": "synthetic_temporal_qa", "annotation": "train/annotations.json",
                               "media_root": "train/videos", "media_type": "video", "num_frames": FRAMES}]},
        "train": {"output_dir": str(out), "max_steps": budget.steps, "per_device_train_batch_size": budget.batch_size,
                  "learning_rate": 1e-3, "warmup_ratio": 0.05, "lr_scheduler_type": "cosine", "weight_decay": 0.0,
                  "bf16": False, "gradient_checkpointing": False, "logging_steps": max(1, budget.steps // 10),
                  "save_strategy": "no", "dataloader_num_workers": 0, "use_cpu": True, "seed": seed},
        "resume": "never",
    }


def eval_config(data: Path, out: Path, tasks: Sequence[str], limit_batch: int) -> dict:
    """MVBench layout and scoring; the prompt is the training format (chat style + "Best option:(")."""
    return {
        "benchmark": "quickstart", "type": "mcqa", "layout": "mvbench", "data_root": str(data), "anno_dir": "eval/json",
        "tasks": [{"name": t, "json": f"{t}.json", "media": "eval/videos", "data_type": "video", "bound": False}
                  for t in tasks],
        "frames": {"rule": "mvbench", "num_frames": FRAMES, "size": IMAGE_SIZE},
        "prompt": {"style": "chat", "use_system": False, "answer_prefix": "Best option:(", "return_prefix": "(",
                   "first_line_only": True},
        "generation": {"num_beams": 1, "do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.0},
        "batch_size": limit_batch, "output_dir": str(out),
    }


def _task_accuracies(results_path: Path) -> dict[str, float]:
    """Strict accuracy per task: MVBench's loose match (SPEC Q8) counts an empty answer "(" as correct, which
    would make an untrained model look perfect on a miniature; the harness reports both, we table the strict one."""
    tasks = json.loads(results_path.read_text())["metrics"]["tasks"]
    return {task: float(v["strict_acc"]) for task, v in tasks.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stllm quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart", help="everything goes under this folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="pipeline check in seconds (no meaningful accuracy)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from stllm.eval import run as eval_run
    from stllm.eval import score as eval_score
    from stllm.synthetic import TASKS, build_dataset, corpus_words
    from stllm.tiny import build_tiny_model_dir
    from stllm.train import run as train_run

    budget = FAST if args.fast else FULL
    if args.steps:
        budget = Budget(budget.train_per_task, budget.eval_per_task, args.steps, budget.batch_size)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"[quickstart] drawing the synthetic dataset (seed {args.seed}) under {out / 'data'}")
    build_dataset(out / "data", seed=args.seed, train_per_task=budget.train_per_task,
                  eval_per_task=budget.eval_per_task, frames=2 * FRAMES, size=64)
    base = build_tiny_model_dir(out / "base_model", seed=args.seed, extra_text=corpus_words(),
                                vision={"image_size": IMAGE_SIZE, "initializer_range": 0.05},
                                num_frames=FRAMES, freeze_vision=False, freeze_qformer=False)
    timings["data"] = time.perf_counter() - t0

    accuracies: dict[str, dict[str, float]] = {}
    for name, overrides in VARIANTS.items():
        slug = name.replace("+", "_")
        t = time.perf_counter()
        print(f"[quickstart] training `{name}` ({budget.steps} steps)")
        cfg = _write_yaml(out / "configs" / f"train_{slug}.yaml",
                          train_config(base, out / "data", out / "models" / slug, overrides, budget, args.seed))
        train_run.main([str(cfg)])
        timings[f"train {name}"] = time.perf_counter() - t
        t = time.perf_counter()
        print(f"[quickstart] evaluating `{name}`")
        ecfg = _write_yaml(out / "configs" / f"eval_{slug}.yaml",
                           eval_config(out / "data", out / "eval" / slug, list(TASKS), budget.batch_size))
        eval_run.main([str(ecfg), "--model", str(out / "models" / slug)])
        eval_score.main([str(out / "eval" / slug / "predictions.jsonl")])
        accuracies[name] = _task_accuracies(out / "eval" / slug / "results.json")
        timings[f"eval {name}"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report(out, accuracies, timings, args, budget)
    return 0


def report(out: Path, accuracies: dict[str, dict[str, float]], timings: dict[str, float], args, budget) -> None:
    """Print the table, write results.json and a grouped bar chart."""
    from stllm.synthetic import TASKS

    tasks = list(TASKS)
    header = "| variant | " + " | ".join(f"{t}{' (static)' if not TASKS[t][1] else ''}" for t in tasks) + \
             " | temporal mean | train s | eval s |"
    lines = [header, "|" + "---|" * (len(tasks) + 4)]
    for name, acc in accuracies.items():
        temporal = [acc.get(t, 0.0) for t in tasks if TASKS[t][1]]
        lines.append(f"| {name} | " + " | ".join(f"{acc.get(t, 0.0):.1f}" for t in tasks) +
                     f" | {sum(temporal) / len(temporal):.1f} | {timings[f'train {name}']:.0f} | "
                     f"{timings[f'eval {name}']:.0f} |")
    table = "\n".join(lines)
    chart = out / "quickstart_accuracy.png"
    _chart(chart, accuracies, tasks)
    payload = {"accuracy_percent": accuracies, "timings_s": timings, "seed": args.seed, "fast": args.fast,
               "steps": budget.steps, "train_per_task": budget.train_per_task, "eval_per_task": budget.eval_per_task,
               "frames": FRAMES, "image_size": IMAGE_SIZE, "chance_percent": {t: 100 / len(TASKS[t][0](
                   __import__("random").Random(0), 2, 16).candidates) for t in tasks},
               "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, {platform.python_version()}"}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print("\n" + table)
    print("\naccuracy in %, strict option matching (MVBench's loose rule is in each eval/*/results.json)")
    print(f"chance: {', '.join(f'{t} {v:.0f}%' for t, v in payload['chance_percent'].items())}")
    print(f"total time {timings['total']:.0f} s; chart: {chart}; results: {out / 'results.json'}")


def _chart(path: Path, accuracies: dict[str, dict[str, float]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(accuracies))
    for i, (name, acc) in enumerate(accuracies.items()):
        ax.bar([k + i * width for k in range(len(tasks))], [acc.get(t, 0.0) for t in tasks], width, label=name)
    ax.set_xticks([k + width * (len(accuracies) - 1) / 2 for k in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("ST-LLM quickstart: synthetic temporal video QA")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
