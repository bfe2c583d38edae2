"""The `data:` section of a training config (YAML) -> DataConfig / DatasetSpec dataclasses, catalog resolved.

Dataset names, annotation files and media roots are data, not code: a catalog YAML (configs/data/
videochat2_it.yaml) defines every VideoChat2-IT dataset of docs/original.md §4.1; a recipe lists the names it uses (and
may override fields such as num_frames). Paths in the catalog are relative: annotations to
`data_root/anno_root`, media to `data_root` (an absolute path in either place is used as it is).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stllm.config import ConfigError, load_config, read_yaml
from stllm.data.sampling import FrameSampling


@dataclass
class DatasetSpec:
    """One instruction dataset. Empty annotation/media fields are filled from the catalog by `name`."""

    name: str = ""
    annotation: str = ""  # JSON path relative to data_root/anno_root (docs/original.md §4.1 table)
    media_root: str = ""  # relative to data_root; "" = paths in the JSON are absolute or data_root-relative
    media_type: str = ""  # video | image ("" = take from the catalog)
    num_frames: int = 16  # docs/original.md §4.1: 16 for the QA recipes, 64 for the conversation recipe
    sample_type: str = "rand"  # FrameSampling.mode used in training (docs/original.md §4.4)
    sample_fps: float = 1.0  # for sample_type=fps
    min_frames: int = 4
    max_frames: int = 16
    fix_start: int | None = None
    # `rand` with a one-frame segment: "stllm" (our seeded stream) or "original" (numpy's global state,
    # docs/faithfulness.md "Random streams and decoding")
    fallback_rng: str = "stllm"
    video_reader: str = "auto"  # auto | decord | pyav | gif | frames (stllm.data.video backends)
    frame_folder_fps: float = 5.0  # docs/original.md §4.4: the original rawframe reader assumed 5 fps
    min_source_frames: int = 1  # a video with fewer frames is bad media (the original padded short videos)
    required: bool = True  # `data check` fails when a required dataset is absent or broken

    def sampling(self) -> FrameSampling:
        """The FrameSampling this dataset trains with."""
        return FrameSampling(
            num_frames=self.num_frames,
            mode=self.sample_type,
            fps=self.sample_fps,
            min_frames=self.min_frames,
            max_frames=self.max_frames,
            fix_start=self.fix_start,
            fallback_rng=self.fallback_rng,
        )


@dataclass
class DataConfig:
    """Instruction data for training: which datasets, where they live, how they are mixed."""

    data_root: str = ""  # root of all media (and of anno_root when that is relative)
    anno_root: str = ""  # VideoChat2-IT annotation root, relative to data_root unless absolute
    catalog: str = ""  # YAML of DatasetSpecs by name; relative to the config file, then to the cwd
    datasets: list[DatasetSpec] = field(default_factory=list)
    mixture: str = "meta_loader"  # meta_loader (docs/original.md §4.6, Q20: one dataset per batch) | shuffled
    on_bad_media: str = "skip"  # skip (log, count, draw another item) | fail (raise MediaError)
    max_retries: int = 10  # replacement draws per sample before giving up
    cache_decoded_mb: float = 0.0  # > 0: keep decoded video files in memory, up to this many MB per dataset and
    # process (stllm.data.frame_cache): for small datasets read many times; the frames are the same
    seed: int = 42  # docs/original.md §4.6: the original DistributedSamplers used seed 42

    def __post_init__(self) -> None:
        if self.mixture not in ("meta_loader", "shuffled"):
            raise ConfigError(f"data.mixture must be meta_loader or shuffled, got {self.mixture!r}")
        if self.on_bad_media not in ("skip", "fail"):
            raise ConfigError(f"data.on_bad_media must be skip or fail, got {self.on_bad_media!r}")


def load_data_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DataConfig:
    """A training config (its `data:` section) or a plain DataConfig YAML -> DataConfig with the catalog resolved.

    Other top-level sections of a training config are ignored here (their schemas live elsewhere).
    """
    cfg = load_config(DataConfig, path, overrides, section="data")
    return resolve_catalog(cfg, Path(path).parent)


def resolve_catalog(cfg: DataConfig, config_dir: str | os.PathLike = ".") -> DataConfig:
    """Fill each dataset's empty fields from the catalog entry of the same name; unknown names are errors."""
    if not cfg.catalog:
        _validate(cfg)
        return cfg
    catalog_path = Path(config_dir) / cfg.catalog
    if not catalog_path.is_file():
        catalog_path = Path(cfg.catalog)
    if not catalog_path.is_file():
        raise ConfigError(f"data.catalog {cfg.catalog!r} not found (relative to {config_dir} or the cwd)")
    raw = read_yaml(catalog_path)
    entries = {d["name"]: d for d in (raw.get("data", raw).get("datasets") or [])}
    resolved = []
    for spec in cfg.datasets:
        if spec.name not in entries:
            raise ConfigError(
                f"dataset {spec.name!r} is not in the catalog {catalog_path}; known: {', '.join(sorted(entries))}"
            )
        entry = entries[spec.name]
        values = dataclasses.asdict(spec)
        for key in ("annotation", "media_root", "media_type"):
            if not values[key] and key in entry:
                values[key] = entry[key]
        resolved.append(DatasetSpec(**values))
    cfg = dataclasses.replace(cfg, datasets=resolved)
    _validate(cfg)
    return cfg


def _validate(cfg: DataConfig) -> None:
    for spec in cfg.datasets:
        if not spec.annotation:
            raise ConfigError(f"dataset {spec.name!r} has no annotation path (set it or use a catalog)")
        if spec.media_type not in ("video", "image"):
            raise ConfigError(f"dataset {spec.name!r}: media_type must be video or image, got {spec.media_type!r}")
        spec.sampling()  # raises on a bad sample_type / num_frames


def annotation_path(cfg: DataConfig, spec: DatasetSpec) -> str:
    """data_root / anno_root / spec.annotation (absolute components win, as with os.path.join)."""
    return os.path.join(cfg.data_root, cfg.anno_root, spec.annotation)


def media_path(cfg: DataConfig, spec: DatasetSpec, relative: str) -> str:
    """data_root / spec.media_root / item path (K710's media_root is "" with absolute paths in its JSON)."""
    return os.path.join(cfg.data_root, spec.media_root, relative)
