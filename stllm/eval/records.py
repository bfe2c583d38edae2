"""predictions.jsonl files of phase 1 -> records, resume bookkeeping and the final merge (no torch: `score` reads them).

Each rank appends one JSON line per item to its own file (predictions.jsonl with one process,
predictions.rank{r}.jsonl under torchrun) and flushes it; a rerun skips the ids already answered in any of those
files (a partial last line from a killed process is discarded, the item redone); at the end rank 0 merges all of
them into predictions.jsonl in item order, one line per id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stllm.eval.protocols import EvalItem

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"


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
