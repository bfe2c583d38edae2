"""`python -m stllm quickstart`: seed -> synthetic time-order video QA -> 3 tiny models trained -> MVBench-scored.

A miniature of the paper's central claim (ST-LLM Sec. 3-4): feeding every frame's tokens to the LLM (`all`)
answers questions that depend on time order, while pooling the frames (`mean`) cannot, and dynamic masking
with the MVM loss keeps that. The three variants differ only in what the paper varies; all go through the real
training entry point (`stllm train`) and the real evaluation harness (`stllm eval` + `stllm score`).

The stages mirror where the paper's model comes from, in miniature:
1. language pretraining (Vicuna's role): the tiny LLM (4 layers x 64) learns the four tasks told in words,
   one phrase per frame (stllm/synthetic_text.py). Without it, a from-scratch LLM never learns to answer by
   option letter within a CPU budget (docs/quickstart.md has the measured search);
2. vision-language alignment (the role of InstructBLIP's pretrained EVA and Q-Former): the towers, drawn at
   random, learn on single frames to write each frame as the LLM's embeddings of its two words
   (stllm/synthetic_vision.py). One frame at a time: nothing about time order is learnt here;
3. video instruction tuning per variant, through `stllm train`, with the paper's split: EVA and Q-Former
   frozen, projection and LLM trained (docs/original.md §1.11). Every variant starts from the same aligned model;
4. evaluation per variant, through `stllm eval` + `stllm score` (MVBench layout and scoring).
The variants run side by side, one process each, with the cores shared out (`--jobs` sets how many at once):
a model this small uses extra threads poorly. The miniature says nothing about the paper's benchmark numbers.

Two scores are reported: MVBench's (the option letter the model writes after "Best option:(") and, as a
diagnostic, whether the option *text* it writes after the letter is the right one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

VARIANTS = {  # name -> model overrides (what the paper varies, nothing else)
    "all": {"video_input": "all", "use_mask": False},
    "all+mask+MVM": {"video_input": "all", "use_mask": True, "mvm_decode": True, "mvm_loss_weight": 1.0},
    "mean": {"video_input": "mean", "use_mask": False},
}
FRAMES = (
    8  # frames the model sees: the videos' 8 drawn frames, each held for 3 (stllm.quickstart.drawing.build_dataset)
)
IMAGE_SIZE = 56  # what the model sees: 4 x 4 patches of 14 px, one per column of stllm.quickstart.drawing
VIDEO_SIZE = 64  # what the videos are drawn at
LLM = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}  # 2 layers never learn the tasks by letter, even from text (docs/quickstart.md)
QUERY_TOKENS = 2  # per frame: as many as words per frame in the language pretraining ("red three")


@dataclass
class Budget:
    train_per_task: int
    eval_per_task: int
    steps: int  # video training steps per variant
    batch_size: int
    text_steps: int  # at most this many language pretraining steps (batch 32); it stops at 100% held out
    align_steps: int  # vision-language alignment steps (batch 64 single frames)


FULL = Budget(train_per_task=250, eval_per_task=50, steps=1000, batch_size=16, text_steps=4000, align_steps=1500)
FAST = Budget(train_per_task=8, eval_per_task=3, steps=4, batch_size=4, text_steps=4, align_steps=4)


def _write_yaml(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


def train_config(base_model: Path, data: Path, out: Path, overrides: dict, budget: Budget, seed: int) -> dict:
    """A training recipe for one variant: the paper's split (towers frozen, projection + LLM trained)."""
    return {
        "model": {
            "init_from": str(base_model),
            "config": {
                "freeze_vision": True,
                "freeze_qformer": True,
                "freeze_llm": False,
                "num_frames": FRAMES,
                **overrides,
            },
        },
        "data": {
            "data_root": str(data),
            "anno_root": "",
            "mixture": "shuffled",
            "cache_decoded_mb": 512,  # ~300 MB: each clip decoded once, not 16 times
            "datasets": [
                {
                    "name": "synthetic_temporal_qa",
                    "annotation": "train/annotations.json",
                    "media_root": "train/videos",
                    "media_type": "video",
                    "num_frames": FRAMES,
                }
            ],
        },
        "train": {
            "output_dir": str(out),
            "max_steps": budget.steps,
            "per_device_train_batch_size": budget.batch_size,
            "learning_rate": 3e-4,
            "warmup_ratio": 0.05,
            "lr_scheduler_type": "cosine",
            "weight_decay": 0.0,
            "bf16": False,
            "gradient_checkpointing": False,
            "logging_steps": max(1, budget.steps // 10),
            "save_strategy": "no",
            "dataloader_num_workers": 0,
            "use_cpu": True,
            "seed": seed,
        },
        "resume": "never",
    }


def eval_config(data: Path, out: Path, tasks: Sequence[str], limit_batch: int) -> dict:
    """MVBench layout and scoring; the prompt is the training format (chat style + "Best option:(")."""
    return {
        "benchmark": "quickstart",
        "type": "mcqa",
        "layout": "mvbench",
        "data_root": str(data),
        "anno_dir": "eval/json",
        "tasks": [
            {"name": t, "json": f"{t}.json", "media": "eval/videos", "data_type": "video", "bound": False}
            for t in tasks
        ],
        "frames": {"rule": "mvbench", "num_frames": FRAMES, "size": IMAGE_SIZE},
        "prompt": {
            "style": "chat",
            "use_system": False,
            "answer_prefix": "Best option:(",
            "return_prefix": "(",
            "first_line_only": True,
        },
        "generation": {"num_beams": 1, "do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.0},
        "batch_size": limit_batch,
        "output_dir": str(out),
    }


def _task_accuracies(results_path: Path) -> dict[str, float]:
    """Strict accuracy per task: MVBench's loose match (docs/faithfulness.md Q8) counts an empty answer "(" as correct,
    which
    would make an untrained model look perfect on a miniature; the harness reports both, we table the strict one."""
    tasks = json.loads(results_path.read_text())["metrics"]["tasks"]
    return {task: float(v["strict_acc"]) for task, v in tasks.items()}


def answer_accuracies(predictions: Path) -> dict[str, float]:
    """Per task, % of answers whose option text (what follows "X) " in the generation) is the right option.

    A diagnostic beside the protocol metric: it tells whether the model knows the answer even when it does not
    bind it to the option letter (see the module docstring).
    """
    right: dict[str, list[int]] = {}
    for line in predictions.read_text().splitlines():
        row = json.loads(line)
        if "raw" not in row:
            continue
        truth = row["answer"].split(") ", 1)[-1].strip()
        # the text without special tokens: `raw` keeps the original's rendering (a final "</s>", docs/faithfulness.md)
        written = row.get("raw_clean", row["raw"]).split(")", 1)[-1].split("\n")[0].strip()
        right.setdefault(row["task"], []).append(int(written == truth))
    return {task: 100.0 * sum(v) / len(v) for task, v in right.items()}


def _run_variant(name: str, out: Path, budget: Budget, seed: int, threads: int) -> dict[str, float]:
    """Train, evaluate and score one variant in child processes (the real CLI), logging to out/logs/<variant>.log.

    -> timings. Raises RuntimeError naming the log when a command fails.
    """
    from stllm.quickstart.drawing import TASKS

    slug = name.replace("+", "_")
    train_cfg = _write_yaml(
        out / "configs" / f"train_{slug}.yaml",
        train_config(out / "base_model", out / "data", out / "models" / slug, VARIANTS[name], budget, seed),
    )
    eval_cfg = _write_yaml(
        out / "configs" / f"eval_{slug}.yaml",
        eval_config(out / "data", out / "eval" / slug, list(TASKS), budget.batch_size),
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    log = out / "logs" / f"{slug}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timings = {}
    steps = {
        "train": ["train", str(train_cfg)],
        "eval": ["eval", str(eval_cfg), "--model", str(out / "models" / slug)],
        "score": ["score", str(out / "eval" / slug / "predictions.jsonl")],
    }
    with log.open("w") as sink:
        for stage, args in steps.items():
            t = time.perf_counter()
            sink.write(f"$ python -m stllm {' '.join(args)}\n")
            sink.flush()
            code = subprocess.run(
                [sys.executable, "-m", "stllm", *args], env=env, stdout=sink, stderr=subprocess.STDOUT
            ).returncode
            if code != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"`{name}`: `python -m stllm {args[0]}` exited with {code}; log {log}:\n{tail}")
            timings[stage] = time.perf_counter() - t
            print(f"[quickstart] `{name}`: {stage} done in {timings[stage]:.0f} s")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm quickstart", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--out", default="runs/quickstart", help="everything goes under this folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="pipeline check in seconds (no meaningful accuracy)")
    parser.add_argument("--steps", type=int, default=None, help="video training steps per variant")
    parser.add_argument("--text-steps", type=int, default=None, help="at most this many language pretraining steps")
    parser.add_argument("--align-steps", type=int, default=None, help="vision-language alignment steps")
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(VARIANTS),
        help="variants trained at once, each in its own process (default: all of them)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from stllm.quickstart.alignment import align_towers
    from stllm.quickstart.drawing import build_dataset, corpus_words
    from stllm.quickstart.language import pretrain_language_model
    from stllm.testing import build_tiny_model_dir

    budget = FAST if args.fast else FULL
    budget = Budget(
        budget.train_per_task,
        budget.eval_per_task,
        args.steps or budget.steps,
        budget.batch_size,
        budget.text_steps if args.text_steps is None else args.text_steps,
        budget.align_steps if args.align_steps is None else args.align_steps,
    )
    jobs = max(1, min(args.jobs, len(VARIANTS)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    print(f"[quickstart] drawing the synthetic dataset (seed {args.seed}) under {out / 'data'}")
    build_dataset(
        out / "data",
        seed=args.seed,
        train_per_task=budget.train_per_task,
        eval_per_task=budget.eval_per_task,
        frames=3 * FRAMES,
        size=VIDEO_SIZE,
        hold=3,
    )
    build_tiny_model_dir(
        out / "base_model",
        seed=args.seed,
        extra_text=corpus_words(),
        vocab_size=600,
        vision={"image_size": IMAGE_SIZE, "initializer_range": 0.05},
        text=LLM,
        num_query_tokens=QUERY_TOKENS,
        num_frames=FRAMES,
        freeze_vision=False,
        freeze_qformer=False,
    )
    timings["data"] = time.perf_counter() - t0

    t = time.perf_counter()
    print(
        f"[quickstart] language pretraining of the tiny LLM (until it answers held-out questions by letter, "
        f"at most {budget.text_steps} steps)"
    )
    torch.set_num_threads(os.cpu_count() or 1)
    text_accuracy, text_steps = pretrain_language_model(out / "base_model", budget.text_steps, args.seed, FRAMES)
    timings["language pretraining"] = time.perf_counter() - t
    print(
        f"[quickstart] after {text_steps} steps the LLM answers the tasks told in words (held out, by letter): "
        + ", ".join(f"{k} {v:.0f}%" for k, v in text_accuracy.items())
    )

    t = time.perf_counter()
    print(f"[quickstart] vision-language alignment of the towers ({budget.align_steps} steps of single frames)")
    word_accuracy = align_towers(
        out / "base_model", budget.align_steps, args.seed, IMAGE_SIZE, size=VIDEO_SIZE, clip_frames=2 * FRAMES
    )
    timings["vision-language alignment"] = time.perf_counter() - t
    print(
        "[quickstart] the towers now write a held-out frame's words (nearest LLM embedding): "
        + ", ".join(f"{k} {v:.0f}%" for k, v in word_accuracy.items())
    )

    print(
        f"[quickstart] training and evaluating {len(VARIANTS)} variants, {jobs} at a time "
        f"({threads} thread{'s' if threads > 1 else ''} each; logs in {out / 'logs'})"
    )
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(_run_variant, name, out, budget, args.seed, threads) for name in VARIANTS}
        variant_timings = {name: future.result() for name, future in futures.items()}
    accuracies: dict[str, dict[str, float]] = {}
    answers: dict[str, dict[str, float]] = {}
    for name, stage_times in variant_timings.items():
        slug = name.replace("+", "_")
        timings[f"train {name}"] = stage_times["train"]
        timings[f"eval {name}"] = stage_times["eval"] + stage_times["score"]
        accuracies[name] = _task_accuracies(out / "eval" / slug / "results.json")
        answers[name] = answer_accuracies(out / "eval" / slug / "predictions.jsonl")
    timings["total"] = time.perf_counter() - t0
    report(out, accuracies, answers, timings, args, budget, text_accuracy, text_steps, word_accuracy)
    return 0


def _table(title: str, scores: dict[str, dict[str, float]], timings: dict[str, float] | None) -> str:
    from stllm.quickstart.drawing import TASKS

    tasks = list(TASKS)
    cols = [f"{t}{' (static)' if not TASKS[t][1] else ''}" for t in tasks] + ["temporal mean"]
    cols += ["train s", "eval s"] if timings else []
    lines = [f"{title}", "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, acc in scores.items():
        temporal = [acc.get(t, 0.0) for t in tasks if TASKS[t][1]]
        row = [f"{acc.get(t, 0.0):.0f}" for t in tasks] + [f"{sum(temporal) / len(temporal):.0f}"]
        row += [f"{timings[f'train {name}']:.0f}", f"{timings[f'eval {name}']:.0f}"] if timings else []
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(
    out: Path,
    accuracies: dict[str, dict[str, float]],
    answers: dict[str, dict[str, float]],
    timings: dict[str, float],
    args,
    budget: Budget,
    text_accuracy: dict[str, float],
    text_steps: int,
    word_accuracy: dict[str, float],
) -> None:
    """Print both tables, write results.json and a chart."""
    from stllm.quickstart.drawing import TASKS

    chart = out / "quickstart_accuracy.png"
    _chart(chart, accuracies, answers, list(TASKS))
    payload = {
        "mvbench_strict_accuracy_percent": accuracies,
        "answer_accuracy_percent": answers,
        "language_pretraining_letter_accuracy_percent": text_accuracy,
        "timings_s": timings,
        "seed": args.seed,
        "fast": args.fast,
        "steps": budget.steps,
        "text_steps": text_steps,
        "alignment_word_accuracy_percent": word_accuracy,
        "align_steps": budget.align_steps,
        "train_per_task": budget.train_per_task,
        "eval_per_task": budget.eval_per_task,
        "frames": FRAMES,
        "image_size": IMAGE_SIZE,
        "chance_percent": 50.0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print()
    print(_table("MVBench scoring (strict: the option letter), % correct", accuracies, timings))
    print()
    print(_table("Answer accuracy (the option text the model writes after the letter), % correct", answers, None))
    print("\nevery question has two options in random order: chance is 50%")
    print(f"total time {timings['total']:.0f} s; chart: {chart}; results: {out / 'results.json'}")
    print(chat_hint(out))


def chat_hint(out: Path) -> str:
    """The commands that open the terminal chat and the web page on the trained `all` model with a held-out
    direction clip, and the answer it should give (the model answers in its training format: no system text,
    "Best option:(" in front, the options on their own lines: typed as \\n in the terminal)."""
    model = out / "models" / "all"
    questions = out / "data" / "eval" / "json" / "direction.json"
    if not questions.is_file():  # nothing to show (the report is printed after the data is drawn, so not expected)
        return f"\nTalk to the trained model: python -m stllm chat --model {model} --video VIDEO (docs/demo.md)"
    item = json.loads(questions.read_text())[0]
    video = out / "data" / "eval" / "videos" / item["video"]
    options = "\\n".join(f"({'AB'[i]}) {c}" for i, c in enumerate(item["candidates"]))
    question = f"Question: {item['question']}\\nOptions:\\n{options}"
    letter = "AB"[item["candidates"].index(item["answer"])]
    flags = f"--frames {FRAMES} --beams 1 --no-system --answer-prefix 'Best option:('"
    rel = _shown_path
    return "\n".join(
        [
            "",
            "Talk to the trained `all` model about a held-out clip (terminal; drop --question for a conversation):",
            f"  python -m stllm chat --model {rel(model)} --video {rel(video)} {flags} \\",
            f"      --question '{question}'",
            f"  the right answer: Best option:({letter}) {item['answer']} (the full quickstart's model gives it)",
            "or on a local web page (http://127.0.0.1:7860; type the same question, \\n between the lines):",
            f"  python -m stllm web --model {rel(model)} {flags} --examples {rel(video)}",
        ]
    )


def _shown_path(path: Path) -> str:
    """A path as the user would type it from the current directory (relative when under it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _chart(
    path: Path, accuracies: dict[str, dict[str, float]], answers: dict[str, dict[str, float]], tasks: list[str]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, (title, scores) in zip(
        axes, (("MVBench scoring (letter)", accuracies), ("answer accuracy (option text)", answers))
    ):
        width = 0.8 / max(1, len(scores))
        for i, (name, acc) in enumerate(scores.items()):
            ax.bar([k + i * width for k in range(len(tasks))], [acc.get(t, 0.0) for t in tasks], width, label=name)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks([k + width * (len(scores) - 1) / 2 for k in range(len(tasks))], tasks)
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("% correct (chance 50)")
    axes[1].legend(fontsize=8)
    fig.suptitle("ST-LLM quickstart: synthetic time-order video QA", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
