"""`python -m stllm eval CONFIG --model DIR [key=value ...]` -> predictions.jsonl, eval_config.yaml, run_info.json.

Phase 1 of docs/design.md decision 8: the benchmark's items are answered by the model (one inference path,
stllm.inference) and written one JSON line each as they are answered (stllm.eval.records), sharded across the
ranks of a torchrun job and resumable: rerunning the same command answers only what is missing.
Single process: `python -m stllm eval ...`; several GPUs (or CPU processes, gloo):
`torchrun --nproc_per_node=N -m stllm eval ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from tqdm import tqdm

from stllm import code_version
from stllm.config import config_to_dict, load_config, save_config
from stllm.eval.config import EvalConfig, validate
from stllm.eval.prompts import build_prompt, mcqa_prediction
from stllm.eval.protocols import EvalItem, load_items
from stllm.eval.records import done_ids, existing_records, merge_predictions, read_records, shard_path
from stllm.generation import postprocess
from stllm.inference import generate_raw, load

logger = logging.getLogger(__name__)

# (pixel_values (B, T, 3, S, S), prompts, Q-Former texts) -> B decoded texts (before the docs/original.md §7.0 text cut)
Answerer = Callable[[torch.Tensor, list[str], list[str]], list[str]]
# (item, cfg) -> (pixel_values (T, 3, S, S), frame indices used)
FrameLoader = Callable[[EvalItem, EvalConfig], tuple[torch.Tensor, list[int]]]


def load_frames(item: EvalItem, cfg: EvalConfig) -> tuple[torch.Tensor, list[int]]:
    """item -> (pixel_values float (T, 3, S, S), frame indices) via the shared reader (docs/original.md §7.1/7.2 frame
    rules)."""
    from stllm.data.sampling import FrameSampling
    from stllm.data.transforms import EvalTransform
    from stllm.data.video import read_clip

    f = cfg.frames
    sampling = FrameSampling(num_frames=f.num_frames, mode=f.rule, min_frames=f.min_frames, max_frames=f.max_frames)
    if item.start is not None and item.end is not None:
        sampling = sampling.with_window(item.start, item.end)
    backend = {"frame": "frames", "gif": "gif"}.get(item.media_type, "auto")
    kwargs: dict[str, Any] = {"backend": backend}
    if item.media_type == "frame" and item.media_fps > 0:
        kwargs["folder_fps"] = item.media_fps
    clip = read_clip(item.video, sampling, **kwargs)
    return EvalTransform(f.size)(clip.frames), [int(i) for i in clip.indices]


def item_queries(item: EvalItem, cfg: EvalConfig) -> list[tuple[str, str]]:
    """(prompt, Q-Former text) per question of the item: one, or two for a VCGBench consistency item (docs/original.md
    §7.3).
    The Q-Former sees the question text (MVBench: question + options, no system text; docs/faithfulness.md Q28)."""
    questions = [item.question] + ([item.extra["question2"]] if "question2" in item.extra else [])
    return [(build_prompt(q, cfg.prompt), q) for q in questions]


def _record(
    item: EvalItem, cfg: EvalConfig, frames: list[int], queries: list[tuple[str, str]], raws: list[str]
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": item.id,
        "index": item.index,
        "benchmark": item.benchmark,
        "task": item.task,
        "video": item.video,
        "question": item.question,
        "answer": item.answer,
        "frame_indices": frames,
        "frame_rule": item.frame_rule,
    }
    if item.candidates:
        rec["candidates"] = item.candidates
    for k, ((prompt, _), raw) in enumerate(zip(queries, raws)):
        text = postprocess(raw)
        suffix = "" if k == 0 else str(k + 1)
        rec[f"prompt{suffix}"] = prompt
        rec[f"raw{suffix}"] = raw
        rec[f"pred{suffix}"] = mcqa_prediction(text, cfg.prompt) if cfg.type == "mcqa" else text
    rec["extra"] = item.extra
    rec["error"] = None
    return rec


def _answer_batch(
    batch: list[EvalItem], cfg: EvalConfig, answerer: Answerer, frame_loader: FrameLoader
) -> list[dict[str, Any]]:
    """Load frames, group the queries by frame count (one generate call per group), build one record per item."""
    from stllm.data.video import MediaError

    loaded: dict[str, tuple[torch.Tensor, list[int]]] = {}
    errors: dict[str, str] = {}
    for item in batch:
        try:
            loaded[item.id] = frame_loader(item, cfg)
        except (MediaError, OSError) as err:
            errors[item.id] = f"{type(err).__name__}: {err}"
            logger.warning("item %s: %s", item.id, errors[item.id])
    queries = {it.id: item_queries(it, cfg) for it in batch if it.id in loaded}
    flat = [(it.id, k) for it in batch if it.id in loaded for k in range(len(queries[it.id]))]
    groups: dict[int, list[tuple[str, int]]] = {}
    for key in flat:
        groups.setdefault(loaded[key[0]][0].shape[0], []).append(key)
    raws: dict[tuple[str, int], str] = {}
    for keys in groups.values():
        pixel_values = torch.stack([loaded[i][0] for i, _ in keys])  # (B, T, 3, S, S)
        texts = answerer(pixel_values, [queries[i][k][0] for i, k in keys], [queries[i][k][1] for i, k in keys])
        raws.update(zip(keys, texts))
    out = []
    for item in batch:
        if item.id in errors:
            out.append(
                {
                    "id": item.id,
                    "index": item.index,
                    "benchmark": item.benchmark,
                    "task": item.task,
                    "video": item.video,
                    "question": item.question,
                    "answer": item.answer,
                    "extra": item.extra,
                    "error": errors[item.id],
                }
            )
        else:
            q = queries[item.id]
            out.append(_record(item, cfg, loaded[item.id][1], q, [raws[(item.id, k)] for k in range(len(q))]))
    return out


def run_phase1(
    cfg: EvalConfig,
    items: Sequence[EvalItem],
    answerer: Answerer,
    frame_loader: FrameLoader = load_frames,
    rank: int = 0,
    world: int = 1,
    barrier: Optional[Callable[[], None]] = None,
) -> dict[str, int]:
    """Answer this rank's share of the items not yet answered; append + flush one line each. Returns counts.

    All ranks read the same existing files before anyone writes (`barrier`), so they agree on the work left;
    that work is split round-robin (item k of the remaining list goes to rank k % world).
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = done_ids(existing_records(output_dir), cfg.retry_errors)
    if barrier:
        barrier()
    mine = shard_path(output_dir, rank, world)
    read_records(mine, repair=True)  # only this rank's file is repaired: nobody else writes it
    todo = [it for it in items if it.id not in done]
    share = todo[rank::world]
    logger.info(
        "rank %d/%d: %d items done before, %d left in all, %d for this rank",
        rank,
        world,
        len(done),
        len(todo),
        len(share),
    )
    counts = {"answered": 0, "errors": 0, "skipped": len(items) - len(todo)}
    with (
        open(mine, "a") as f,
        tqdm(total=len(share), desc=f"{cfg.benchmark} rank {rank}", disable=rank != 0 and world > 1) as bar,
    ):
        for start in range(0, len(share), cfg.batch_size):
            batch = list(share[start : start + cfg.batch_size])
            for rec in _answer_batch(batch, cfg, answerer, frame_loader):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line, then flush
                f.flush()
                counts["errors" if rec.get("error") else "answered"] += 1
            bar.update(len(batch))
    return counts


# settings that may change between a run and its resumption without mixing incompatible predictions
RESUME_FREE_KEYS = ("limit", "batch_size", "output_dir", "judge", "retry_errors", "data_root")


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_dist(world: int) -> Optional[Callable[[], None]]:
    """gloo process group (barriers and small gathers only; generation is independent per rank)."""
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))

    def barrier() -> None:
        dist.barrier()

    return barrier


def _device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def build_answerer(model_dir: str, cfg: EvalConfig, device: torch.device) -> Answerer:
    """Load the model folder through the one inference path -> an Answerer over generate_raw."""
    model, processor = load(model_dir, device, cfg.dtype)
    # docs/faithfulness.md Q1: the legacy MVBench path fed all T*32 tokens whatever the model's video_input
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
        raise SystemExit(
            f"{output_dir} holds predictions made with different settings ({', '.join(diff)}); "
            f"use a fresh output_dir=... or restore those settings"
        )


def write_run_info(cfg: EvalConfig, model_dir: str, output_dir: Path, extra: dict[str, Any]) -> None:
    info = {
        "model": model_dir,
        "benchmark": cfg.benchmark,
        "frames": dataclasses.asdict(cfg.frames),
        "generation": cfg.generation.describe(),
        "prompt_style": cfg.prompt.style,
        "use_system": cfg.prompt.use_system,
        "legacy_mvbench_all_tokens": cfg.legacy_mvbench_all_tokens,
        "code_version": code_version(),
        **extra,
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
        write_run_info(
            cfg, model_dir, output_dir, {"world_size": world, "items": len(items), "status": "done", "this_run": counts}
        )
        logger.info("%s: %s -> %s", cfg.benchmark, counts, path)
        if counts["errors"]:
            logger.warning("%d items could not be read (error lines in %s)", counts["errors"], path)
    if barrier:
        barrier()
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm eval", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("config", help="benchmark YAML, e.g. configs/eval/mvbench.yaml")
    parser.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=/data/MVBench")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(EvalConfig, args.config, args.overrides)
    counts = run(cfg, args.model)
    print(json.dumps(counts))
    return 0
