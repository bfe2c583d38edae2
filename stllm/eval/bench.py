"""`python -m stllm bench eval --model DIR --videos DIR` -> a table: the eval loop's wall time against its decode
and model time, and items/s by batch size, at 16 and 64 frames (docs/performance.md).

The videos are laid out as one MVBench-style task (every clip of the folder, repeated up to --items items) and
answered by phase 1's own loop (stllm.eval.predict.run_phase1: DataLoader decode workers, batched vision encoding
and generation). Per setting it reports medians over --repeats runs: wall seconds, the sums of decode + transform
seconds (all workers) and model seconds, the seconds the model loop waited for frames, and items/s. The machine
may be shared: the medians damp that, they do not remove it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from stllm.config import load_config
from stllm.data.video import VIDEO_EXTS
from stllm.eval.config import EvalConfig, TaskSpec
from stllm.eval.loader import default_workers
from stllm.eval.predict import build_answerer, resolve_frame_size, run_phase1
from stllm.eval.protocols import load_items

logger = logging.getLogger(__name__)
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "mvbench.yaml"


def _layout(videos: list[Path], items: int, root: Path) -> None:
    """An MVBench-layout folder: json/bench.json with `items` questions cycling over the videos."""
    rows = [
        {
            "video": str(videos[k % len(videos)]),
            "question": f"What happens in clip {k}?",
            "candidates": ["walking", "running", "sitting"],
            "answer": "walking",
        }
        for k in range(items)
    ]
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "json" / "bench.json").write_text(json.dumps(rows))


def measure(
    model_dir: str, videos_dir: Path, frames: int, batch: int, workers: int, items: int, new_tokens: int, repeats: int
) -> dict[str, float]:
    """One setting -> median seconds (wall, decode, model, wait) and items/s over `repeats` runs."""
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTS)
    if not videos:
        raise SystemExit(f"{videos_dir}: no videos")
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _layout(videos, items, root)
        overrides = [
            f"data_root={root}",
            f"frames.num_frames={frames}",
            f"frames.max_frames={frames}",
            f"batch_size={batch}",
            f"generation.max_new_tokens={new_tokens}",
        ]
        cfg = load_config(EvalConfig, CONFIG, overrides)
        cfg.tasks = [TaskSpec(name="Bench", json="bench.json", media=str(videos_dir), data_type="video")]
        resolve_frame_size(cfg, model_dir)
        answerer = build_answerer(model_dir, cfg, torch.device("cpu"))
        work = load_items(cfg)
        run_phase1(cfg, work[:batch], answerer, num_workers=0)  # warm-up (file cache, lazy imports), not counted
        for r in range(repeats):
            cfg.output_dir = str(root / f"out{r}")
            stats: dict[str, float] = {}
            run_phase1(cfg, work, answerer, num_workers=workers, stats=stats)
            runs.append(stats)
    keys = ("wall_s", "decode_s", "model_s", "wait_s", "first_wait_s")
    med = {k: statistics.median(s[k] for s in runs) for k in keys}
    med["items_per_s"] = statistics.median(items / s["wall_s"] for s in runs)
    med["model_items_per_s"] = statistics.median(items / max(s["model_s"], 1e-9) for s in runs)
    return med


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stllm bench eval", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (e.g. from `python -m stllm tiny-model`)")
    parser.add_argument("--videos", required=True, type=Path, help="folder of videos")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=None, help="decode workers (default: 0 and the eval default)"
    )
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workers = args.workers if args.workers is not None else sorted({0, default_workers()})
    threads = torch.get_num_threads()
    print(
        f"{args.items} items, {args.max_new_tokens} new tokens, medians of {args.repeats} runs, {threads} torch threads"
    )
    head = ["frames", "batch", "workers", "wall s", "decode s (sum)", "model s (sum)", "decode + model s"]
    tail = ["waits for data s (first batch)", "items/s", "model items/s"]
    print("| " + " | ".join([*head, *tail]) + " |")
    print("|" + " --- |" * (len(head) + len(tail)))
    for frames in args.frames:
        for batch in args.batch:
            for w in workers:
                m = measure(args.model, args.videos, frames, batch, w, args.items, args.max_new_tokens, args.repeats)
                print(
                    f"| {frames} | {batch} | {w} | {m['wall_s']:.2f} | {m['decode_s']:.2f} | {m['model_s']:.2f} | "
                    f"{m['decode_s'] + m['model_s']:.2f} | {m['wait_s']:.2f} ({m['first_wait_s']:.2f}) | "
                    f"{m['items_per_s']:.2f} | {m['model_items_per_s']:.1f} |",
                    flush=True,
                )
    return 0
