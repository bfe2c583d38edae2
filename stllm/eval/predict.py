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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from stllm import code_version
from stllm.config import ConfigError, config_to_dict, load_config, save_config
from stllm.eval.config import EvalConfig, validate
from stllm.eval.loader import FrameLoader, Loaded, batches, default_workers
from stllm.eval.metrics import AnswerFormatError, check_ans, check_ans_strict, record_error
from stllm.eval.prompts import build_prompt, mcqa_prediction
from stllm.eval.protocols import EvalItem, load_items
from stllm.eval.records import (
    EvalLock,
    EvalRunError,
    check_output_dir,
    check_same_model,
    done_ids,
    existing_records,
    failure_summary,
    merge_predictions,
    model_identity,
    read_records,
    shard_path,
)
from stllm.generation import postprocess
from stllm.inference import ModelLoadError, generate_raw, load

logger = logging.getLogger(__name__)

# (pixel_values (B, T, 3, S, S), prompts, Q-Former texts) -> B decoded texts (before the docs/original.md §7.0 text cut)
Answerer = Callable[[torch.Tensor, list[str], list[str]], list[str]]
__all__ = ["FrameLoader", "load_frames", "main", "run", "run_phase1"]


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
        # docs/faithfulness.md Q35: `raw` is the clean decode; an AnswerText also carries the original's decode
        # ("</s>" and id 0 as text). "pred"/"raw" hold the original's text (what its judge and loose match saw)
        # unless generation.original_text is off; "pred_clean"/"raw_clean" always hold the clean text.
        clean = str(raw)
        original = getattr(raw, "original", clean) if cfg.generation.original_text else clean
        suffix = "" if k == 0 else str(k + 1)
        rec[f"prompt{suffix}"] = prompt
        for key, decoded in (("", original), ("_clean", clean)):
            text = postprocess(decoded)
            rec[f"raw{key}{suffix}"] = decoded
            rec[f"pred{key}{suffix}"] = mcqa_prediction(text, cfg.prompt) if cfg.type == "mcqa" else text
    rec["extra"] = item.extra
    rec["error"] = None
    return rec


def _error_record(item: EvalItem, got: Loaded) -> dict[str, Any]:
    return {
        "id": item.id,
        "index": item.index,
        "benchmark": item.benchmark,
        "task": item.task,
        "video": item.video,
        "question": item.question,
        "answer": item.answer,
        "extra": item.extra,
        "error": got.error,
        "error_reason": got.error_reason,
        "error_path": got.error_path,
    }


def _answer_loaded(
    batch: list[tuple[EvalItem, Loaded]], cfg: EvalConfig, answerer: Answerer, stats: dict[str, float]
) -> list[dict[str, Any]]:
    """Loaded items -> one record each. The queries are grouped by frame count (one generate call per group: the
    video tokens of a batch must have one length); vision encoding and generation are batched within a group."""
    for item, got in batch:
        if got.error:
            logger.warning("item %s: %s", item.id, got.error)
    ok = [(item, got) for item, got in batch if got.pixel_values is not None]
    queries = {item.id: item_queries(item, cfg) for item, _ in ok}
    pixels = {item.id: got.pixel_values for item, got in ok}
    groups: dict[int, list[tuple[str, int]]] = {}
    for item, got in ok:
        assert got.pixel_values is not None
        for k in range(len(queries[item.id])):
            groups.setdefault(got.pixel_values.shape[0], []).append((item.id, k))
    raws: dict[tuple[str, int], str] = {}
    for keys in groups.values():
        pixel_values = torch.stack([pixels[i] for i, _ in keys])  # type: ignore[misc]  # (B, T, 3, S, S)
        t0 = time.perf_counter()
        texts = answerer(pixel_values, [queries[i][k][0] for i, k in keys], [queries[i][k][1] for i, k in keys])
        stats["model_s"] = stats.get("model_s", 0.0) + time.perf_counter() - t0
        raws.update(zip(keys, texts))
    out = []
    for item, got in batch:
        if got.pixel_values is None:
            out.append(_error_record(item, got))
        else:
            q = queries[item.id]
            out.append(_record(item, cfg, got.frame_indices, q, [raws[(item.id, k)] for k in range(len(q))]))
    return out


class RunningAccuracy:
    """Loose and strict MVBench/TVBench accuracy over the answers so far (the original printed it as it went)."""

    def __init__(self) -> None:
        self.total = self.loose = self.strict = 0

    def add(self, rec: dict[str, Any]) -> None:
        if record_error(rec) or "pred" not in rec:
            return
        try:  # as the scorer: loose on the original's text, strict on the clean text (docs/faithfulness.md Q35)
            loose = check_ans(rec["pred"], rec["answer"])
        except AnswerFormatError:  # an item error for the scorer (Q36), not part of the running figure
            return
        self.total += 1
        self.loose += loose
        self.strict += check_ans_strict(rec.get("pred_clean", rec["pred"]), rec["answer"])

    def postfix(self) -> str:
        if not self.total:
            return ""
        return f"acc {100 * self.loose / self.total:.1f}% strict {100 * self.strict / self.total:.1f}%"


def run_phase1(
    cfg: EvalConfig,
    items: Sequence[EvalItem],
    answerer: Answerer,
    frame_loader: FrameLoader = load_frames,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    model: dict[str, Any] | None = None,
    num_workers: int = 0,
    stats: dict[str, float] | None = None,
) -> dict[str, int]:
    """Answer this rank's share of the items not yet answered; append + flush one line each. Returns counts.

    All ranks read the same existing files before anyone writes (`barrier`), so they agree on the work left;
    that work is split round-robin (item k of the remaining list goes to rank k % world). Frames are decoded in
    `num_workers` DataLoader processes ahead of the model (0: in this process). `model` (model_identity) is
    written into every line. `stats` receives seconds: wall, decode (sum over items), model, wait (the model
    loop blocked on data; first_wait: of which for the first batch, worker start-up included).
    """
    stats = {} if stats is None else stats
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
        "rank %d/%d: %d items done before, %d left in all, %d for this rank (%d decode workers)",
        rank,
        world,
        len(done),
        len(todo),
        len(share),
        num_workers,
    )
    counts = {"answered": 0, "errors": 0, "skipped": len(items) - len(todo)}
    accuracy = RunningAccuracy() if cfg.type == "mcqa" else None
    for key in ("decode_s", "model_s", "wait_s"):
        stats.setdefault(key, 0.0)
    t_start = time.perf_counter()
    with (
        open(mine, "a") as f,
        tqdm(total=len(share), desc=f"{cfg.benchmark} rank {rank}", disable=rank != 0 and world > 1) as bar,
    ):
        stream = batches(share, cfg, frame_loader, cfg.batch_size, num_workers)
        while True:
            t0 = time.perf_counter()
            loaded = next(stream, None)
            waited = time.perf_counter() - t0
            stats["wait_s"] += waited
            stats.setdefault("first_wait_s", waited)  # the first batch also waits for the workers to start
            if loaded is None:
                break
            stats["decode_s"] += sum(got.seconds for got in loaded)
            batch = [(share[got.position], got) for got in loaded]
            for rec in _answer_loaded(batch, cfg, answerer, stats):
                if model is not None:
                    rec["model"] = model
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line, then flush
                f.flush()
                counts["errors" if rec.get("error") else "answered"] += 1
                if accuracy is not None:
                    accuracy.add(rec)
            if accuracy is not None and accuracy.total:
                bar.set_postfix_str(accuracy.postfix(), refresh=False)
            bar.update(len(batch))
    stats["wall_s"] = time.perf_counter() - t_start
    return counts


# settings that may change between a run and its resumption without mixing incompatible predictions
RESUME_FREE_KEYS = ("limit", "batch_size", "output_dir", "judge", "retry_errors", "data_root")


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _init_dist(world: int) -> Callable[[], None] | None:
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
        raise EvalRunError(
            f"{output_dir} holds predictions made with different settings ({', '.join(diff)}); "
            f"use a fresh output_dir=... or restore those settings"
        )


def resolve_frame_size(cfg: EvalConfig, model_dir: str) -> None:
    """frames.size comes from the model (its vision tower's input size, StllmConfig.frame_size()), as in the demos.

    0 (the schema default) takes the model's; a different value set by the user is a ConfigError naming both.
    Without a model folder (an injected answerer) the configured value stays (0: 224, the released models').
    """
    config_json = Path(model_dir) / "config.json"
    if not config_json.is_file():
        cfg.frames.size = cfg.frames.size or 224  # the released models' size (docs/original.md §7.1)
        return
    from stllm.models.configuration import StllmConfig

    try:
        size = StllmConfig.from_pretrained(model_dir).frame_size()
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{config_json}: cannot read the model's frame size ({err})") from err
    if cfg.frames.size and cfg.frames.size != size:
        raise ConfigError(
            f"frames.size={cfg.frames.size} but the model {model_dir} takes {size}x{size} frames; "
            f"drop frames.size (or set frames.size=0) to use the model's"
        )
    cfg.frames.size = size


def write_run_info(
    cfg: EvalConfig, model_dir: str, output_dir: Path, extra: dict[str, Any], identity: dict[str, Any] | None = None
) -> None:
    info = {
        "model": model_dir,
        "model_identity": identity if identity is not None else model_identity(model_dir),
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


def _broadcast_error(message: str | None, world: int) -> str | None:
    """Rank 0's setup error (or None) -> every rank, so that no rank waits at a barrier rank 0 never reaches."""
    if world <= 1:
        return message
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _setup(cfg: EvalConfig, model_dir: str, output_dir: Path, items: int, world: int, identity: dict[str, Any]) -> None:
    """Rank 0, before anything expensive: every check that can refuse the run, then eval_config.yaml + run_info."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, output_dir)
    check_same_model(output_dir, identity, model_dir)
    save_config(cfg, output_dir / "eval_config.yaml")
    write_run_info(cfg, model_dir, output_dir, {"world_size": world, "items": items, "status": "running"}, identity)


def run(
    cfg: EvalConfig,
    model_dir: str,
    answerer: Answerer | None = None,
    num_workers: int = 0,
) -> dict[str, int]:
    """Phase 1 for one process of a (possibly torchrun) job; rank 0 holds the folder's lock, merges and writes
    run_info.json. `num_workers` decode processes; 0 (the default here) decodes in this process. Workers are
    spawned, which re-imports the caller's main script: a script that calls `run` at top level (no
    `if __name__ == "__main__":` guard) must keep 0. `python -m stllm eval` passes `--workers` (default_workers)."""
    validate(cfg)
    rank, world, local_rank = _dist_env()
    output_dir = Path(cfg.output_dir)
    # checks that need no lock and write nothing: a bad --model or output_dir fails before any file appears
    check_output_dir(output_dir)
    if answerer is None and not (Path(model_dir) / "config.json").is_file():
        raise ModelLoadError(f"--model {model_dir}: no such model folder (config.json not found)")
    resolve_frame_size(cfg, model_dir)
    items = load_items(cfg)
    identity = model_identity(model_dir)
    barrier = _init_dist(world)
    lock = EvalLock(output_dir)
    error: str | None = None
    try:
        if rank == 0:
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
                _setup(cfg, model_dir, output_dir, len(items), world, identity)
            except EvalRunError as err:
                error = str(err)
        error = _broadcast_error(error, world)
        if error is not None:
            raise EvalRunError(error)
        if answerer is None:
            answerer = build_answerer(model_dir, cfg, _device(local_rank))
        counts = run_phase1(
            cfg, items, answerer, rank=rank, world=world, barrier=barrier, model=identity, num_workers=num_workers
        )
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, counts)
            counts = {k: sum(c[k] for c in gathered) for k in counts}
            counts["skipped"] = gathered[0]["skipped"]
        if rank == 0:
            path = merge_predictions(output_dir, items)
            write_run_info(
                cfg,
                model_dir,
                output_dir,
                {
                    "world_size": world,
                    "items": len(items),
                    "status": "done",
                    "this_run": counts,
                    "workers": num_workers,
                },
                identity,
            )
            logger.info("%s: %s -> %s", cfg.benchmark, counts, path)
            if counts["errors"]:
                logger.warning("%d items could not be read (error lines in %s)", counts["errors"], path)
        if barrier:
            barrier()
    finally:
        lock.release()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm eval", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("config", help="benchmark YAML, e.g. configs/eval/mvbench.yaml")
    parser.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode processes prefetching frames ahead of the model (default: spare cores, at most 4; 0: none)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=/data/MVBench")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(EvalConfig, args.config, args.overrides)
    workers = args.workers
    if workers is None:
        workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1))))
    counts = run(cfg, args.model, num_workers=workers)
    print(json.dumps(counts))
    items = load_items(cfg)
    final = read_records(Path(cfg.output_dir) / "predictions.jsonl")
    summary = failure_summary(final, len(items))
    if summary is None:
        return 0
    if len([r for r in final if not r.get("error")]) == 0:
        # every item failed: no number can come of this run, so it must not end with status 0
        print(f"stllm eval: error: {summary}", file=sys.stderr)
        return 1
    print(f"stllm eval: {summary}; rerun the same command to retry them", file=sys.stderr)
    return 0
