"""EvalConfig + items + an answerer -> predictions.jsonl in output_dir (phase 1 of DESIGN 8): sharded, resumable.

Each rank appends one JSON line per item to its own file (predictions.jsonl with one process,
predictions.rank{r}.jsonl under torchrun) and flushes it; a rerun skips the ids already answered in any of those
files (a partial last line from a killed process is discarded, the item redone); at the end rank 0 merges all of
them into predictions.jsonl in item order, one line per id.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from tqdm import tqdm

from stllm.eval.benchmarks import EvalItem
from stllm.eval.config import EvalConfig
from stllm.eval.prompts import build_prompt, mcqa_prediction, postprocess

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
# (pixel_values (B, T, 3, S, S), prompts, Q-Former texts) -> B decoded texts (before the SPEC 7.0 text cut)
Answerer = Callable[[torch.Tensor, list[str], list[str]], list[str]]
# (item, cfg) -> (pixel_values (T, 3, S, S), frame indices used)
FrameLoader = Callable[[EvalItem, EvalConfig], tuple[torch.Tensor, list[int]]]


def shard_path(output_dir: Path, rank: int, world: int) -> Path:
    return output_dir / (PREDICTIONS if world == 1 else f"predictions.rank{rank}.jsonl")


def read_records(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Lines of a predictions file that parse as JSON objects. With `repair`, an unterminated or unreadable last
    line (a process killed while writing) is cut off the file so that appending starts on a clean line."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, good_end, pos = [], 0, 0
    for raw in data.splitlines(keepends=True):
        pos += len(raw)
        complete = raw.endswith(b"\n")
        try:
            rec = json.loads(raw) if complete else None
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "id" in rec:
            records.append(rec)
            good_end = pos
        elif raw.strip():
            logger.warning("%s: discarding an unreadable line at byte %d (%d bytes)", path, pos - len(raw), len(raw))
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def existing_records(output_dir: Path) -> list[dict[str, Any]]:
    """All records in predictions.jsonl and every predictions.rank*.jsonl (read-only)."""
    files = [output_dir / PREDICTIONS] + sorted(output_dir.glob("predictions.rank*.jsonl"))
    return [rec for f in files for rec in read_records(f)]


def done_ids(records: Iterable[dict[str, Any]], retry_errors: bool) -> set[str]:
    return {r["id"] for r in records if not (retry_errors and r.get("error"))}


def merge_predictions(output_dir: Path, items: Sequence[EvalItem]) -> Path:
    """Every record of every prediction file -> predictions.jsonl in item order, one per id (an answer wins over
    an error line; otherwise the first seen); the rank shards are removed afterwards."""
    order = {it.id: it.index for it in items}
    best: dict[str, dict[str, Any]] = {}
    unknown = 0
    for rec in existing_records(output_dir):
        if rec["id"] not in order:
            unknown += 1
            continue
        prev = best.get(rec["id"])
        if prev is None or (prev.get("error") and not rec.get("error")):
            best[rec["id"]] = rec
    if unknown:
        logger.warning("%d records with ids not in this benchmark's items were dropped from the merge", unknown)
    final = output_dir / PREDICTIONS
    tmp = output_dir / (PREDICTIONS + ".tmp")
    with open(tmp, "w") as f:
        for rec in sorted(best.values(), key=lambda r: order[r["id"]]):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, final)
    for shard in output_dir.glob("predictions.rank*.jsonl"):
        shard.unlink()
    logger.info("merged %d predictions of %d items into %s", len(best), len(items), final)
    return final


def load_frames(item: EvalItem, cfg: EvalConfig) -> tuple[torch.Tensor, list[int]]:
    """item -> (pixel_values float (T, 3, S, S), frame indices) via the shared reader (SPEC 7.1/7.2 frame rules)."""
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
    """(prompt, Q-Former text) per question of the item: one, or two for a VCGBench consistency item (SPEC 7.3).
    The Q-Former sees the question text (MVBench: question + options, no system text; SPEC Q28)."""
    questions = [item.question] + ([item.extra["question2"]] if "question2" in item.extra else [])
    return [(build_prompt(q, cfg.prompt), q) for q in questions]


def _record(item: EvalItem, cfg: EvalConfig, frames: list[int], queries: list[tuple[str, str]],
            raws: list[str]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": item.id, "index": item.index, "benchmark": item.benchmark, "task": item.task, "video": item.video,
        "question": item.question, "answer": item.answer, "frame_indices": frames, "frame_rule": item.frame_rule,
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


def _answer_batch(batch: list[EvalItem], cfg: EvalConfig, answerer: Answerer,
                  frame_loader: FrameLoader) -> list[dict[str, Any]]:
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
            out.append({"id": item.id, "index": item.index, "benchmark": item.benchmark, "task": item.task,
                        "video": item.video, "question": item.question, "answer": item.answer,
                        "extra": item.extra, "error": errors[item.id]})
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
    logger.info("rank %d/%d: %d items done before, %d left in all, %d for this rank", rank, world,
                len(done), len(todo), len(share))
    counts = {"answered": 0, "errors": 0, "skipped": len(items) - len(todo)}
    with open(mine, "a") as f, tqdm(total=len(share), desc=f"{cfg.benchmark} rank {rank}",
                                     disable=rank != 0 and world > 1) as bar:
        for start in range(0, len(share), cfg.batch_size):
            batch = list(share[start:start + cfg.batch_size])
            for rec in _answer_batch(batch, cfg, answerer, frame_loader):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")  # one write per line, then flush
                f.flush()
                counts["errors" if rec.get("error") else "answered"] += 1
            bar.update(len(batch))
    return counts
