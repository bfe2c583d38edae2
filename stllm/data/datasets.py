"""VideoChat2-IT annotations + media -> VideoQAItem samples; mixtures of datasets -> per-step batch index lists.

docs/original.md §4.2-4.3: one QA turn per sample (the QA list shuffled, the first taken: Q14 KEEP), frames by
read_clip with
the dataset's FrameSampling (``rand`` in training), the training transform applied to the whole clip.
docs/original.md §4.6 / Q20: the original MetaLoader gives every batch a single dataset, chosen per step with
probability
proportional to its number of batches; MetaLoaderBatchSampler reproduces that over a ConcatDataset.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from stllm.data.config import DataConfig, DatasetSpec, annotation_path, media_path
from stllm.data.frame_cache import DecodedVideoCache
from stllm.data.sampling import FrameSampling
from stllm.data.transforms import build_transform
from stllm.data.types import VideoQAItem
from stllm.data.video import MediaError, read_clip
from stllm.errors import StllmError

logger = logging.getLogger(__name__)


class AnnotationError(StllmError, ValueError):
    """An annotation file that cannot be used at all (not UTF-8, not JSON, not a list, no usable item)."""


Transform = Callable[..., torch.Tensor]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_seconds(value: Any) -> float | None:
    """A window bound as written in an annotation (a number or a numeric string) -> float; None when it is not."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return float(value) if _is_number(value) and math.isfinite(value) else None


def item_problem(item: Any, media_key: str | None = None) -> str | None:
    """Why one annotation item cannot be trained on (None when it can).

    An item is a dict with a media path (`media_key`, or "video"/"image" when None) that is a non-empty string,
    a non-empty "QA" list of dicts whose "i"/"q"/"a" are strings, optional "start"/"end" (seconds, numbers or
    numeric strings, start <= end) and an optional positive integer "num_frames".
    """
    if not isinstance(item, dict):
        return f"not a JSON object ({type(item).__name__})"
    keys = [media_key] if media_key else [k for k in ("video", "image") if k in item] or ["video"]
    key = keys[0]
    if key not in item:
        return f"no {key!r} path"
    if not isinstance(item[key], str) or not item[key]:
        return f"{key!r} is {item[key]!r} ({type(item[key]).__name__}), not a file name"
    qa = item.get("QA")
    if not isinstance(qa, list) or not qa:
        return "no QA list" if qa is None else f"'QA' is {type(qa).__name__}, not a non-empty list"
    for n, turn in enumerate(qa):
        if not isinstance(turn, dict):
            return f"QA[{n}] is {type(turn).__name__}, not an object"
        for field in ("i", "q", "a"):
            # "i" may be null (no instruction); "q" and "a", when present, are text
            if field in turn and not isinstance(turn[field], str) and not (field == "i" and turn[field] is None):
                return f"QA[{n}].{field} is {type(turn[field]).__name__} ({turn[field]!r}), not a string"
    bounds = {}
    for field in ("start", "end"):
        if item.get(field) is not None:
            bounds[field] = _as_seconds(item[field])
            if bounds[field] is None:
                return f"{field!r} is {item[field]!r}, not a number of seconds"
    if len(bounds) == 2 and bounds["end"] < bounds["start"]:  # type: ignore[operator]
        return f"window end {bounds['end']} s is before its start {bounds['start']} s"
    frames = item.get("num_frames")
    if frames is not None and not (isinstance(frames, int) and not isinstance(frames, bool) and frames > 0):
        return f"'num_frames' is {frames!r}, not a positive integer"
    return None


def read_annotations(path: str, media_key: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """A VideoChat2-IT JSON -> (valid items, [(position in the file, why it was dropped)]).

    Raises FileNotFoundError / AnnotationError naming the file when the file itself is unusable; a bad item inside
    a good file is dropped and reported (item_problem). Window bounds given as numeric strings become floats.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
    items: list[dict[str, Any]] = []
    dropped: list[tuple[int, str]] = []
    for n, item in enumerate(data):
        problem = item_problem(item, media_key)
        if problem is not None:
            dropped.append((n, problem))
            continue
        for field in ("start", "end"):
            if isinstance(item.get(field), str):
                item = {**item, field: float(item[field])}
        items.append(item)
    return items, dropped


def load_annotations(path: str, media_key: str | None = None) -> list[dict[str, Any]]:
    """A VideoChat2-IT JSON (list of {"video"|"image", "QA": [{"i","q","a"}], ...}) -> its valid items.

    Raises FileNotFoundError / AnnotationError naming the file; malformed items (item_problem) are dropped, counted
    and logged with their reasons (the first three).
    """
    items, dropped = read_annotations(path, media_key)
    if dropped:
        shown = "; ".join(f"item {n}: {why}" for n, why in dropped[:3])
        logger.warning("%s: dropped %d malformed items (%s%s)", path, len(dropped), shown, "; ..." * (len(dropped) > 3))
    return items


class InstructionDataset(Dataset[VideoQAItem]):
    """One VideoChat2-IT dataset -> VideoQAItem (pixel_values float32 (T,3,S,S); T=1 for images).

    Randomness (QA shuffle, frame draw, crop, replacement index) comes from an RNG derived from
    (seed, epoch, index), so a sample is reproducible in any worker; call set_epoch each pass.
    Bad media: on_bad_media="skip" logs it and draws another index (at most `max_retries` times, then raises);
    "fail" raises the MediaError naming the file. The replaced files travel in `item.extra["bad_media"]`, so
    the training loop counts them (also from DataLoader workers).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        data_root: str,
        transform: Transform | None = None,
        *,
        train: bool = True,
        on_bad_media: str = "skip",
        seed: int = 42,
        anno_root: str = "",
        max_retries: int = 10,
        image_size: int = 224,
        cache_decoded_mb: float = 0.0,
    ):
        if on_bad_media not in ("skip", "fail"):
            raise ValueError(f"on_bad_media must be skip or fail, got {on_bad_media!r}")
        self.spec, self.train, self.on_bad_media = spec, train, on_bad_media
        self.seed, self.max_retries, self.epoch = seed, max_retries, 0
        self.cfg = DataConfig(data_root=data_root, anno_root=anno_root)
        self.transform = transform if transform is not None else build_transform(train, image_size)
        self.annotation = annotation_path(self.cfg, spec)
        self.is_image = spec.media_type == "image"
        # malformed items are dropped here, counted and logged (docs/data.md, Bad data)
        self.items, self.dropped_items = read_annotations(self.annotation, "image" if self.is_image else "video")
        if self.dropped_items:
            shown = "; ".join(f"item {n}: {why}" for n, why in self.dropped_items[:3])
            logger.warning(
                "[%s] %s: dropped %d malformed items (%s)", spec.name, self.annotation, len(self.dropped_items), shown
            )
        sampling = spec.sampling()
        # evaluation-style use of a training set: deterministic segment middles (docs/original.md §4.4 `middle`)
        self.sampling = sampling if train else FrameSampling(num_frames=sampling.num_frames, mode="middle")
        # video files decoded once and kept (stllm.data.frame_cache), when asked: same frames, less decoding
        self.cache = DecodedVideoCache(cache_decoded_mb) if cache_decoded_mb > 0 and not self.is_image else None

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)

    def media_file(self, item: dict[str, Any]) -> str:
        return media_path(self.cfg, self.spec, item["image"] if self.is_image else item["video"])

    def load(self, index: int, rng: random.Random) -> VideoQAItem:
        """Read, sample and transform one item; raises MediaError for bad media."""
        item = self.items[index]
        path = self.media_file(item)
        qa = list(item["QA"])
        if self.train and len(qa) > 1:
            rng.shuffle(qa)  # docs/original.md §3.2 / Q14: shuffle then keep only the first turn
        turn = qa[0]
        if self.is_image:
            clip = read_clip(path, self.sampling, backend="image")
        else:
            sampling = self.sampling
            if "start" in item and "end" in item:
                sampling = sampling.with_window(float(item["start"]), float(item["end"]))
            reader = self.cache.read if self.cache is not None else read_clip
            clip = reader(
                path,
                sampling,
                rng=rng,
                backend=self.spec.video_reader,
                folder_fps=self.spec.frame_folder_fps,
                max_source_frames=item.get("num_frames"),
            )  # per sample only: docs/faithfulness.md Q17 fix
            if clip.total_frames < self.spec.min_source_frames:
                raise MediaError(
                    path, f"{clip.total_frames} frames, fewer than min_source_frames={self.spec.min_source_frames}"
                )
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        pixels = self.transform(clip.frames, generator=generator)  # (T, 3, S, S) float32
        return VideoQAItem(
            pixel_values=pixels,
            instruction=turn.get("i", "") or "",
            question=turn.get("q", ""),
            answer=turn.get("a", ""),
            media=path,
            frame_indices=clip.indices,
            is_image=self.is_image,
            dataset=self.spec.name,
            extra={"index": index, "duration": clip.duration, "fps": clip.fps},
        )

    def __getitem__(self, index: int) -> VideoQAItem:
        rng = self._rng(index)
        bad: list[tuple[str, str]] = []
        for _ in range(self.max_retries + 1):
            try:
                sample = self.load(index, rng)
                sample.extra["bad_media"] = bad
                return sample
            except MediaError as err:
                if self.on_bad_media == "fail":
                    raise
                bad.append((err.path, err.problem))
                logger.warning("[%s] skipping bad media %s: %s", self.spec.name, err.path, err.problem)
                index = rng.randrange(len(self.items))  # docs/original.md §4.3: replace by a random other item
        raise MediaError(
            self.annotation,
            f"{len(bad)} bad media files in a row (last: {bad[-1][0]}: "
            f"{bad[-1][1]}); giving up after max_retries={self.max_retries}",
        )


def build_datasets(
    cfg: DataConfig, *, image_size: int, train: bool = True, transform: Transform | None = None
) -> list[InstructionDataset]:
    """A resolved DataConfig -> one InstructionDataset per entry (same transform and bad-media policy).

    image_size is the model's input size (its vision config), the transform's output size.
    """
    transform = transform if transform is not None else build_transform(train, image_size)
    return [
        InstructionDataset(
            spec,
            cfg.data_root,
            transform,
            train=train,
            on_bad_media=cfg.on_bad_media,
            seed=cfg.seed,
            anno_root=cfg.anno_root,
            max_retries=cfg.max_retries,
            cache_decoded_mb=cfg.cache_decoded_mb,
        )
        for spec in cfg.datasets
    ]


def _shard(n: int, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool = True) -> list[int]:
    """torch DistributedSampler(shuffle, seed, drop_last=False) order for one rank (padded by wrapping)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    pad = total - n
    order += (order * math.ceil(pad / n))[:pad] if pad > 0 else []
    return order[rank:total:world_size]


class MetaLoaderBatchSampler(Sampler[list[int]]):
    """Batches of global ConcatDataset indices, every batch from ONE dataset (docs/original.md §4.6, Q20 KEEP).

    Per dataset: DistributedSampler order (seed + epoch), this rank's shard, batches of batch_size with
    drop_last. Per pass: dataset i appears len(batches_i) times in a list shuffled by Random(seed + epoch), so
    a dataset is chosen with probability proportional to its number of batches. Every rank computes the same
    dataset order from (seed, epoch) without any broadcast, and takes its own shard of that dataset.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        *,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.sizes, self.batch_size = list(sizes), batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.offsets = [0]
        for n in self.sizes[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.epoch = 0

    def batches_per_dataset(self) -> list[int]:
        return [math.ceil(n / self.world_size) // self.batch_size if n else 0 for n in self.sizes]

    def __len__(self) -> int:
        return sum(self.batches_per_dataset())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def dataset_order(self) -> list[int]:
        """Which dataset each step of this pass draws from (identical on every rank)."""
        order = [i for i, nb in enumerate(self.batches_per_dataset()) for _ in range(nb)]
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[list[int]]:
        shards = [
            _shard(n, self.seed, self.epoch, self.rank, self.world_size, self.shuffle) if n else [] for n in self.sizes
        ]
        cursor = [0] * len(self.sizes)
        for ds in self.dataset_order():
            lo = cursor[ds]
            cursor[ds] += self.batch_size
            yield [self.offsets[ds] + i for i in shards[ds][lo : lo + self.batch_size]]


class ShuffledBatchSampler(MetaLoaderBatchSampler):
    """Plain mix: one DistributedSampler-style shuffle over the whole ConcatDataset (batches may mix datasets)."""

    def batches_per_dataset(self) -> list[int]:
        return [math.ceil(sum(self.sizes) / self.world_size) // self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        shard = _shard(sum(self.sizes), self.seed, self.epoch, self.rank, self.world_size, self.shuffle)
        for step in range(len(self)):
            yield shard[step * self.batch_size : (step + 1) * self.batch_size]


def build_batch_sampler(
    sizes: Sequence[int],
    batch_size: int,
    *,
    mixture: str = "meta_loader",
    seed: int = 42,
    rank: int = 0,
    world_size: int = 1,
) -> MetaLoaderBatchSampler:
    """Dataset sizes -> the batch sampler over their ConcatDataset (DataLoader(concat, batch_sampler=...))."""
    cls = {"meta_loader": MetaLoaderBatchSampler, "shuffled": ShuffledBatchSampler}[mixture]
    return cls(sizes, batch_size, seed=seed, rank=rank, world_size=world_size)
