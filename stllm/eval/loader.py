"""Benchmark items -> batches of decoded, transformed frames, prefetched by DataLoader worker processes.

Decoding and the evaluation transform (docs/original.md §7.1) run in `num_workers` processes ahead of the model,
so the model loop waits only when decoding is slower than the model; `num_workers=0` keeps everything in the
calling process (and accepts a frame loader that cannot be pickled, e.g. a closure). Batches come in item order;
an unreadable item is a `Loaded` with its error, not an exception (a counted skip, docs/reliability.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from stllm.data.video import MediaError
from stllm.eval.config import EvalConfig
from stllm.eval.protocols import EvalItem

# (item, cfg) -> (pixel_values (T, 3, S, S), frame indices used)
FrameLoader = Callable[[EvalItem, EvalConfig], tuple[torch.Tensor, list[int]]]


@dataclass
class Loaded:
    """One item's frames (or why there are none) and the seconds its decode + transform took."""

    position: int  # index into the sequence of items given to `batches`
    pixel_values: torch.Tensor | None  # (T, 3, S, S) float, None on error
    frame_indices: list[int]
    error: str | None = None  # "MediaError: /x.mp4: file not found"
    error_reason: str | None = None  # "file not found" (groups the failure summary)
    error_path: str | None = None
    seconds: float = 0.0


def load_one(position: int, item: EvalItem, cfg: EvalConfig, frame_loader: FrameLoader) -> Loaded:
    """One item -> Loaded; an item error of the reader, a media or file-system error is captured with its reason
    (anything else is a bug)."""
    t0 = time.perf_counter()
    if item.error:  # found by the reader (e.g. an MVBench window ending before it starts): never shown to the model
        return Loaded(position, None, [], f"item error: {item.error}", "item error", item.video, 0.0)
    try:
        pixels, indices = frame_loader(item, cfg)
    except MediaError as err:
        msg = f"{type(err).__name__}: {err}"
        return Loaded(position, None, [], msg, err.problem, err.path, time.perf_counter() - t0)
    except OSError as err:
        msg = f"{type(err).__name__}: {err}"
        reason = err.strerror or type(err).__name__
        return Loaded(position, None, [], msg, reason, str(err.filename or item.video), time.perf_counter() - t0)
    return Loaded(position, pixels, indices, seconds=time.perf_counter() - t0)


class _Items(Dataset):
    def __init__(self, items: Sequence[EvalItem], cfg: EvalConfig, frame_loader: FrameLoader) -> None:
        self.items, self.cfg, self.frame_loader = items, cfg, frame_loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Loaded:
        return load_one(k, self.items[k], self.cfg, self.frame_loader)


def _as_list(batch: list[Loaded]) -> list[Loaded]:
    return batch


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes one clip; the cores belong to the model and the other workers


def default_workers(local_world: int = 1) -> int:
    """A sensible default: one worker per spare core of this process's share of the machine, at most 4."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    return max(1, min(4, cores // max(1, local_world) - 1))


def batches(
    items: Sequence[EvalItem],
    cfg: EvalConfig,
    frame_loader: FrameLoader,
    batch_size: int,
    num_workers: int,
    prefetch: int = 2,
) -> Iterator[list[Loaded]]:
    """Items -> lists of up to `batch_size` Loaded, in order; `num_workers` > 0 decodes in worker processes, each
    keeping `prefetch` batches ready ahead of the consumer."""
    if num_workers <= 0 or len(items) == 0:
        for start in range(0, len(items), batch_size):
            yield [load_one(k, items[k], cfg, frame_loader) for k in range(start, min(start + batch_size, len(items)))]
        return
    # spawn, not fork: a fork of a process whose OpenMP pool has run (the model) can hang in the child's first
    # parallel torch op; spawned workers import afresh (a few seconds once per run) and need a picklable frame_loader
    kwargs: dict[str, Any] = {
        "prefetch_factor": prefetch,
        "worker_init_fn": _one_thread,
        "multiprocessing_context": "spawn",
    }
    loader = DataLoader(
        _Items(items, cfg, frame_loader),
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(num_workers, len(items)),
        collate_fn=_as_list,
        **kwargs,
    )
    yield from loader
