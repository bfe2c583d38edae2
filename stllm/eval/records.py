"""predictions.jsonl files of phase 1 -> records, resume bookkeeping and the final merge (no torch: `score` reads them).

Each rank appends one JSON line per item to its own file (predictions.jsonl with one process,
predictions.rank{r}.jsonl under torchrun) and flushes it; a rerun skips the ids already answered in any of those
files (a partial last line from a killed process is discarded, the item redone); at the end rank 0 merges all of
them into predictions.jsonl in item order, one line per id. A line that parses but lacks the fields of a
prediction or of an error record (a hand edit, another tool's file) is discarded with a warning and its item redone.

Each line and run_info.json carry the identity of the model that answered (`model_identity`: resolved path + a
cheap content fingerprint), so a resume by another model is refused, and `EvalLock` keeps a second process off
an output folder that one is already filling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stllm.errors import StllmError

if TYPE_CHECKING:
    from stllm.eval.protocols import EvalItem

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
LOCK = "eval.lock"
# fields every record has; an answer adds "pred", an error record a non-empty "error"
RECORD_FIELDS = ("id", "index", "benchmark", "task", "question", "answer")
FINGERPRINT_EDGE = 1 << 20  # bytes hashed at each end of a model file


class EvalRunError(StllmError, SystemExit):
    """An output folder that this run may not write: another model's or another setting's predictions, a live
    lock, a path that is not a writable folder. One line saying what to do. (Also a SystemExit, as the resume
    refusal always was, so callers that caught that keep working.)"""


def missing_fields(rec: dict[str, Any]) -> list[str]:
    """The fields a record lacks to count as a prediction or an error record ([] when it is complete)."""
    missing = [k for k in RECORD_FIELDS if k not in rec]
    if not rec.get("error") and "pred" not in rec:
        missing.append("pred (or error)")
    return missing


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
        if isinstance(rec, dict) and missing_fields(rec):
            # a whole line, so the file stays appendable; the item is simply not done
            logger.warning(
                "%s: discarding a line at byte %d without the fields of a prediction (missing: %s); its item is redone",
                path,
                pos - len(raw),
                ", ".join(missing_fields(rec)),
            )
            good_end = pos
        elif isinstance(rec, dict):
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


def model_identity(model_dir: str | os.PathLike) -> dict[str, str | None]:
    """Model folder -> {"path": resolved path, "fingerprint": sha256 or None when there is no such folder}.

    The fingerprint is content-based but cheap (a 7B folder's full tensor hash, stllm.checkpoints.inspect, reads
    16 GB): over every file of the folder in name order, its relative name, its size and its first and last MiB.
    The first MiB of a safetensors file holds its header (every tensor's name, dtype, shape and offsets) and the
    first weights; the last MiB the last weights; config, processor and tokenizer files are read whole. So a copy
    of a model matches itself wherever it lies, and a different checkpoint of the same architecture differs.
    """
    path = Path(model_dir).resolve()
    if not path.is_dir():
        return {"path": str(path), "fingerprint": None}
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}|{size}|".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(FINGERPRINT_EDGE))
            if size > 2 * FINGERPRINT_EDGE:
                fh.seek(size - FINGERPRINT_EDGE)
                h.update(fh.read(FINGERPRINT_EDGE))
            elif size > FINGERPRINT_EDGE:
                h.update(fh.read())
    return {"path": str(path), "fingerprint": h.hexdigest()}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two identities name the same model: equal fingerprints, or equal paths where either has none."""
    if a.get("fingerprint") and b.get("fingerprint"):
        return a["fingerprint"] == b["fingerprint"]
    return a.get("path") == b.get("path")


def check_same_model(output_dir: Path, identity: dict[str, Any], model_dir: str) -> None:
    """Refuse to add this model's answers to predictions another model made (run_info.json and every line)."""
    others: list[dict[str, Any]] = []
    info = output_dir / "run_info.json"
    if info.is_file():
        try:
            saved = json.loads(info.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        if isinstance(saved, dict) and isinstance(saved.get("model_identity"), dict):
            others.append(saved["model_identity"])
    records = existing_records(output_dir)
    others += [r["model"] for r in records if isinstance(r.get("model"), dict)]
    if not records:
        return  # nothing answered yet: any model may start here
    for other in others:
        if not same_model(other, identity):
            raise EvalRunError(
                f"{output_dir} holds predictions of another model ({other.get('path')}, fingerprint "
                f"{str(other.get('fingerprint'))[:12]}), not of --model {model_dir} "
                f"(fingerprint {str(identity.get('fingerprint'))[:12]}); "
                "use a fresh output_dir=... or pass the same --model"
            )


def check_output_dir(output_dir: Path) -> None:
    """output_dir must be (or become) a writable folder: no regular file on its path, its nearest existing folder
    writable. Checked before anything is loaded or written."""
    probe = output_dir
    while True:
        if probe.exists() and not probe.is_dir():
            raise EvalRunError(f"output_dir={output_dir}: {probe} is a file, not a folder; choose another output_dir")
        if probe.is_dir():
            break
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        raise EvalRunError(f"output_dir={output_dir}: {probe} is not writable; choose another output_dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class EvalLock:
    """OUTPUT_DIR/eval.lock holding {"pid", "host"} of the process filling that folder (rank 0 under torchrun).

    A second process refuses with one line naming the holder; a lock whose process is gone (same host, pid not
    alive: a kill -9, a crash) is taken over with a warning. Removed on release.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self.held = True
            return
        raise EvalRunError(f"{self.path}: another eval took this output folder at the same moment; rerun later")

    def _take_over_if_stale(self, host: str) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, their_host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            logger.warning("%s: unreadable lock file (a process killed while writing it?), taking it over", self.path)
            self.path.unlink(missing_ok=True)
            return
        if their_host == host and not _pid_alive(pid):
            logger.warning("%s: the process that held it (pid %d) is gone; taking the lock over", self.path, pid)
            self.path.unlink(missing_ok=True)
            return
        raise EvalRunError(
            f"{self.path}: another eval (pid {pid} on {their_host}) is writing this output folder; wait for it, "
            f"use another output_dir=..., or delete the lock file if that process is gone"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def failure_reason(rec: dict[str, Any]) -> tuple[str, str]:
    """An error record -> (reason without the path, the path or message): groups "file not found" across items."""
    reason = rec.get("error_reason") or str(rec.get("error"))
    return str(reason), str(rec.get("error_path") or rec.get("video") or "")


def failure_summary(records: Sequence[dict[str, Any]], total: int) -> str | None:
    """Final records of a run -> one line "K of N items failed: 3 x file not found (first: /x.mp4); ..." or None."""
    failed = [r for r in records if r.get("error")]
    if not failed:
        return None
    groups: dict[str, list[str]] = {}
    for rec in failed:
        reason, where = failure_reason(rec)
        groups.setdefault(reason, []).append(where)
    parts = [
        f"{len(paths)} x {reason} (first: {paths[0]})"
        for reason, paths in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    head = f"all {total} items failed" if len(failed) >= total else f"{len(failed)} of {total} items failed"
    return f"{head}: " + "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")
