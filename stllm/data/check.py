"""`python -m stllm data check CONFIG [--all] [--sample N] [key=value ...]` -> a per-dataset table and exit code.

CONFIG is a training config (its `data:` section is read with the DataConfig schema; other sections are
ignored) or a plain DataConfig YAML. Per dataset: annotation found, usable items, malformed items dropped (with
their reasons), media files missing, files that fail to decode among a sample (8 by default, every file with
--all), and windows past the end of their video among the decoded ones (training clamps them). Exit 1 when a
required dataset is absent (no annotation, no items) or broken (dropped, missing or unreadable above --max-bad).
A config error raises ConfigError (stllm.cli prints it as one line, exit 2). Evaluation configs
(stllm/eval/config.py) are not checked here.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from stllm.config import ConfigError
from stllm.data.config import DataConfig, DatasetSpec, annotation_path, load_data_config, media_path
from stllm.data.datasets import read_annotations
from stllm.data.sampling import FrameSampling
from stllm.data.video import MediaError, read_clip

logger = logging.getLogger(__name__)

SHOWN_DROPPED = 10  # malformed annotation items listed per dataset (all are counted)


@dataclass
class DatasetReport:
    name: str
    required: bool
    annotation: str
    found: bool = False
    items: int = 0  # usable items (malformed ones not included)
    dropped: int = 0  # malformed items, dropped by training too (stllm.data.datasets.item_problem)
    missing: int = 0
    decoded: int = 0
    unreadable: int = 0
    clamped: int = 0  # decoded items whose [start, end] window runs past the end of the video
    problems: list[str] = field(default_factory=list)

    def status(self, max_bad: float) -> str:
        if not self.found or self.items == 0:
            return "ABSENT"
        bad_dropped = self.dropped / (self.items + self.dropped) > max_bad
        bad_missing = self.missing / self.items > max_bad
        bad_decode = self.decoded > 0 and self.unreadable / self.decoded > max_bad
        if bad_dropped or bad_missing or bad_decode or self.missing == self.items:
            return "BROKEN"
        return "WARN" if self.dropped or self.missing or self.unreadable or self.clamped else "OK"


def check_dataset(cfg: DataConfig, spec: DatasetSpec, sample: int | None, seed: int = 0) -> DatasetReport:
    """Inspect one dataset: annotation, media presence (all items), decoding (a sample or all)."""
    report = DatasetReport(spec.name, spec.required, annotation_path(cfg, spec))
    key = "image" if spec.media_type == "image" else "video"
    try:
        items, dropped = read_annotations(report.annotation, key)
    except FileNotFoundError:
        report.problems.append(f"annotation not found: {report.annotation}")
        return report
    except ValueError as err:
        report.problems.append(str(err))
        return report
    report.found, report.items, report.dropped = True, len(items), len(dropped)
    for n, why in dropped[:SHOWN_DROPPED]:
        report.problems.append(f"dropped item {n} of {report.annotation}: {why}")
    if len(dropped) > SHOWN_DROPPED:
        report.problems.append(f"... and {len(dropped) - SHOWN_DROPPED} more dropped items")
    present = []
    for item in items:
        path = media_path(cfg, spec, item.get(key, ""))
        if os.path.exists(path):
            present.append((path, item))
        else:
            report.missing += 1
            if report.missing <= 3:
                report.problems.append(f"missing: {path}")
    chosen = present if sample is None else random.Random(seed).sample(present, min(sample, len(present)))
    # a cheap, deterministic decode of a few frames is enough to prove the file is readable
    probe = FrameSampling(num_frames=min(spec.num_frames, 4), mode="middle")
    for path, item in chosen:
        report.decoded += 1
        # training applies a window only when both bounds are given (InstructionDataset.load)
        windowed = key == "video" and item.get("start") is not None and item.get("end") is not None
        try:
            clip = read_clip(
                path,
                probe.with_window(item["start"], item["end"]) if windowed else probe,
                backend="image" if key == "image" else spec.video_reader,
                folder_fps=spec.frame_folder_fps,
                max_source_frames=item.get("num_frames"),
            )
        except MediaError as err:
            report.unreadable += 1
            if report.unreadable <= 3:
                report.problems.append(f"unreadable: {err}")
            continue
        # the window's last frame as stllm.data.sampling.frame_indices computes it; past the video's last frame,
        # training clamps the indices to it (docs/data.md, Frame sampling)
        if windowed and _window_last_frame(item["start"], item["end"], clip.fps) > clip.total_frames - 1:
            report.clamped += 1
            if report.clamped <= 3:
                report.problems.append(
                    f"window past the end: {path}: end {item['end']:g} s, video {clip.duration:.2f} s "
                    "(training clamps it to the last frame)"
                )
    return report


def _window_last_frame(start: float, end: float, fps: float) -> int:
    """[start, end] seconds at `fps` -> the window's last frame index (offset int(start*fps), int((end-start)*fps)
    frames, as in stllm.data.sampling.frame_indices)."""
    return int(start * fps) + max(1, int((end - start) * fps)) - 1


def format_table(reports: Sequence[DatasetReport], max_bad: float) -> str:
    header = (
        "dataset",
        "req",
        "annotation",
        "items",
        "dropped",
        "missing",
        "decoded",
        "unreadable",
        "clamped",
        "status",
    )
    rows = [header] + [
        (
            r.name,
            "yes" if r.required else "no",
            "found" if r.found else "ABSENT",
            str(r.items),
            str(r.dropped),
            str(r.missing),
            str(r.decoded),
            str(r.unreadable),
            str(r.clamped),
            r.status(max_bad),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm data check", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("config", help="training config (data: section) or DataConfig YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the data section (data_root=...)")
    parser.add_argument("--all", action="store_true", help="decode every present media file")
    parser.add_argument("--sample", type=int, default=8, help="media files decoded per dataset (default 8)")
    parser.add_argument(
        "--max-bad",
        type=float,
        default=0.01,
        help="fraction of missing or unreadable media above which a dataset is BROKEN",
    )
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    cfg = load_data_config(args.config, args.overrides)  # a ConfigError is stllm.cli's to report (one line, exit 2)
    if not cfg.datasets:
        raise ConfigError(f"{args.config}: defines no datasets (data.datasets is empty)")
    print(f"data_root: {cfg.data_root or '(cwd)'}   anno_root: {cfg.anno_root or '(data_root)'}")
    data_logger = logging.getLogger("stllm.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # the table reports what the readers would log
    try:
        reports = [check_dataset(cfg, spec, None if args.all else args.sample) for spec in cfg.datasets]
    finally:
        data_logger.setLevel(level)  # main(argv) may run inside a longer-lived process
    print(format_table(reports, args.max_bad))
    failed = [r for r in reports if r.required and r.status(args.max_bad) in ("ABSENT", "BROKEN")]
    for r in reports:
        for problem in r.problems:
            print(f"  [{r.name}] {problem}")
    if failed:
        print(f"FAIL: required datasets absent or broken: {', '.join(r.name for r in failed)}")
        return 1
    print(f"OK: {len(reports)} datasets, {sum(r.items for r in reports)} items")
    return 0
