"""`python -m stllm eval CONFIG --model DIR [key=value ...]` -> predictions.jsonl, eval_config.yaml, run_info.json.

Phase 1 of DESIGN 8. Single process: `python -m stllm eval ...`; several GPUs (or CPU processes, gloo):
`torchrun --nproc_per_node=N -m stllm eval ...`; rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml

import stllm
from stllm.config import config_to_dict, load_config, save_config
from stllm.eval.benchmarks import load_items
from stllm.eval.config import EvalConfig, validate
from stllm.eval.generate import describe_generation, generate_raw
from stllm.eval.runner import Answerer, merge_predictions, run_phase1

logger = logging.getLogger(__name__)

# settings that may change between a run and its resumption without mixing incompatible predictions
RESUME_FREE_KEYS = ("limit", "batch_size", "output_dir", "judge", "retry_errors", "data_root")


def code_version() -> dict[str, Optional[str]]:
    """stllm.__version__ and the git commit of the source tree, when it is a git checkout."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(stllm.__file__).parent, capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"stllm": stllm.__version__, "git_commit": commit}


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_dist(world: int) -> Optional[Callable[[], None]]:
    """gloo process group (barriers and small gathers only; generation is independent per rank)."""
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    return dist.barrier


def _device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":  # SPEC 7.0: the original ran fp16 on GPU; fp32 on CPU (no fp16 kernels worth using)
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def build_answerer(model_dir: str, cfg: EvalConfig, device: torch.device) -> Answerer:
    """Load StllmForConditionalGeneration + StllmProcessor from `model_dir` -> an Answerer over generate_raw."""
    from stllm.data.processor import StllmProcessor
    from stllm.models.modeling import StllmForConditionalGeneration

    model = StllmForConditionalGeneration.from_pretrained(model_dir, dtype=_dtype(cfg.dtype, device))
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    processor = StllmProcessor.from_pretrained(model_dir)
    # SPEC Q1: the legacy MVBench path fed all T*32 tokens whatever the model's video_input
    override = "all" if (cfg.legacy_mvbench_all_tokens and cfg.prompt.style == "mvbench") else None

    def answerer(pixel_values: torch.Tensor, prompts: list[str], qformer_texts: list[str]) -> list[str]:
        return generate_raw(model, processor, pixel_values, prompts, qformer_texts, cfg.generation, override)

    return answerer


def _check_resume(cfg: EvalConfig, output_dir: Path) -> None:
    """Refuse to append to predictions made under different protocol settings."""
    saved = output_dir / "eval_config.yaml"
    if not saved.is_file():
        return
    old = yaml.safe_load(saved.read_text()) or {}
    new = config_to_dict(cfg)
    diff = sorted(k for k in set(old) | set(new) if k not in RESUME_FREE_KEYS and old.get(k) != new.get(k))
    if diff and any(output_dir.glob("predictions*.jsonl")):
        raise SystemExit(f"{output_dir} holds predictions made with different settings ({', '.join(diff)}); "
                         f"use a fresh output_dir=... or restore those settings")


def write_run_info(cfg: EvalConfig, model_dir: str, output_dir: Path, extra: dict[str, Any]) -> None:
    info = {
        "model": model_dir, "benchmark": cfg.benchmark, "frames": dataclasses.asdict(cfg.frames),
        "generation": describe_generation(cfg.generation), "prompt_style": cfg.prompt.style,
        "use_system": cfg.prompt.use_system, "legacy_mvbench_all_tokens": cfg.legacy_mvbench_all_tokens,
        "code_version": code_version(), **extra,
    }
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))


def run(cfg: EvalConfig, model_dir: str, answerer: Optional[Answerer] = None) -> dict[str, int]:
    """Phase 1 for one process of a (possibly torchrun) job; rank 0 merges and writes run_info.json."""
    validate(cfg)
    rank, world, local_rank = _dist_env()
    barrier = _init_dist(world)
    output_dir = Path(cfg.output_dir)
    items = load_items(cfg)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        _check_resume(cfg, output_dir)
        save_config(cfg, output_dir / "eval_config.yaml")
        write_run_info(cfg, model_dir, output_dir, {"world_size": world, "items": len(items), "status": "running"})
    if barrier:
        barrier()
    if answerer is None:
        answerer = build_answerer(model_dir, cfg, _device(local_rank))
    counts = run_phase1(cfg, items, answerer, rank=rank, world=world, barrier=barrier)
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, counts)
        counts = {k: sum(c[k] for c in gathered) for k in counts}
        counts["skipped"] = gathered[0]["skipped"]
    if rank == 0:
        path = merge_predictions(output_dir, items)
        write_run_info(cfg, model_dir, output_dir, {"world_size": world, "items": len(items), "status": "done",
                                                     "this_run": counts})
        logger.info("%s: %s -> %s", cfg.benchmark, counts, path)
        if counts["errors"]:
            logger.warning("%d items could not be read (error lines in %s)", counts["errors"], path)
    if barrier:
        barrier()
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stllm eval", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="benchmark YAML, e.g. configs/eval/mvbench.yaml")
    parser.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=/data/MVBench")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(EvalConfig, args.config, args.overrides)
    counts = run(cfg, args.model)
    print(json.dumps(counts))
    return 0
