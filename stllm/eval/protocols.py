"""Official annotation files under data_root -> list[EvalItem] in a stable order with stable unique ids
(docs/original.md §7.2-7.4).

One reader per layout (a plain dict at the bottom): mvbench (MVBench/TVBench per-task json), vcgbench (Video-ChatGPT
generic/temporal/consistency files), msvd, msrvtt, anet. Missing files raise BenchmarkDataError naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from stllm.errors import StllmError
from stllm.eval.config import EvalConfig, TaskSpec
from stllm.eval.prompts import mcqa_question

logger = logging.getLogger(__name__)


class BenchmarkDataError(StllmError, FileNotFoundError):
    """An annotation file or folder that is missing or malformed (the message names it)."""


@dataclass
class EvalItem:
    """One benchmark question. `video` is resolved against data_root; `answer` is the ground truth as scored
    (MVBench: "(B) text"); consistency items carry the second question in extra["question2"]."""

    id: str
    index: int
    benchmark: str
    task: str
    video: str
    question: str
    answer: str
    candidates: list[str] = field(default_factory=list)
    start: Optional[float] = None
    end: Optional[float] = None
    media_type: str = "video"  # video | frame | gif
    media_fps: float = 0.0  # frame folders / gifs (docs/original.md §7.2: 3 for tvqa frames, 25 for gifs)
    frame_rule: str = "uniform_middle"
    extra: dict[str, Any] = field(default_factory=dict)


def _path(cfg: EvalConfig, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(cfg.data_root) / p


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise BenchmarkDataError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{what} is not valid JSON: {path}: {err}") from err


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkDataError(f"{where}: missing field(s) {missing}; has {sorted(row)}")


def _mvbench_tasks(cfg: EvalConfig) -> list[TaskSpec]:
    tasks = list(cfg.tasks)
    anno = _path(cfg, cfg.anno_dir)
    if cfg.discover_tasks:
        if not anno.is_dir():
            raise BenchmarkDataError(f"annotation folder not found: {anno}")
        known = {t.json for t in tasks}
        for f in sorted(anno.glob("*.json")):
            if f.name not in known:
                name = f.stem.replace("_", " ").title()
                logger.info("discovered task %r from %s", name, f)
                tasks.append(TaskSpec(name=name, json=f.name, media=f"{cfg.discovered_media_root}/{f.stem}"))
        # when discovering, a table task whose json is absent is skipped with a warning (TVBench releases differ)
        for t in tasks:
            if not (anno / t.json).is_file():
                logger.warning("task %r skipped: %s not found", t.name, anno / t.json)
        tasks = [t for t in tasks if (anno / t.json).is_file()]
    return tasks


def read_mvbench(cfg: EvalConfig) -> list[EvalItem]:
    """MVBench/TVBench: anno_dir/<task json> items {video, question, candidates, answer[, start, end]}
    (docs/original.md §7.2)."""
    items: list[EvalItem] = []
    for task in _mvbench_tasks(cfg):
        path = _path(cfg, cfg.anno_dir) / task.json
        rows = _load_json(path, f"task {task.name!r} annotation")
        stem = Path(task.json).stem
        for i, row in enumerate(rows):
            where = f"{path} item {i}"
            _require(row, ("video", "question", "candidates", "answer"), where)
            if task.bound:
                _require(row, ("start", "end"), where)
            question_text, gt = mcqa_question(row["question"], row["candidates"], row["answer"])
            media = _path(cfg, task.media) / row["video"]
            items.append(
                EvalItem(
                    id=f"{stem}/{i}",
                    index=len(items),
                    benchmark=cfg.benchmark,
                    task=task.name,
                    video=str(media),
                    question=question_text,
                    answer=gt,
                    candidates=list(row["candidates"]),
                    start=float(row["start"]) if task.bound else None,
                    end=float(row["end"]) if task.bound else None,
                    media_type=task.data_type,
                    media_fps=task.fps,
                    frame_rule=cfg.frames.rule,
                    extra={"raw_question": row["question"], "raw_answer": row["answer"]},
                )
            )
    return items


def _find_video(video_dir: Path, name: str, extensions: list[str]) -> Optional[Path]:
    for ext in extensions:
        cand = video_dir / f"{name}{ext}"
        if cand.exists():
            return cand
    return None


def read_vcgbench(cfg: EvalConfig) -> list[EvalItem]:
    """Video-ChatGPT Benchmarking_QA files: {video_name, Q, A} (consistency: Q1, Q2, A) (docs/original.md §7.3).

    Video = first existing {video_dir}/{video_name}{ext}. None found: a path that does not exist (the item then
    fails as a MediaError and is counted), or, with vcgbench_keep_previous_video (docs/faithfulness.md Q29), the
    previous video.
    """
    video_dir = _path(cfg, cfg.video_dir)
    items: list[EvalItem] = []
    previous: Optional[Path] = None
    for task, rel in cfg.question_files.items():
        path = _path(cfg, rel)
        rows = _load_json(path, f"VCGBench {task} question file")
        for i, row in enumerate(rows):
            keys = ("video_name", "Q1", "Q2", "A") if task == "consistency" else ("video_name", "Q", "A")
            _require(row, keys, f"{path} item {i}")
            found = _find_video(video_dir, str(row["video_name"]), cfg.video_extensions)
            if found is None:
                if cfg.vcgbench_keep_previous_video and previous is not None:
                    logger.warning(
                        "no video for %r; reusing %s (docs/faithfulness.md Q29 legacy)", row["video_name"], previous
                    )
                    found = previous
                else:
                    found = video_dir / f"{row['video_name']}{cfg.video_extensions[0] if cfg.video_extensions else ''}"
            previous = found
            extra: dict[str, Any] = {"video_name": row["video_name"]}
            question = row["Q1"] if task == "consistency" else row["Q"]
            if task == "consistency":
                extra["question2"] = row["Q2"]
            items.append(
                EvalItem(
                    id=f"{task}/{i}",
                    index=len(items),
                    benchmark=cfg.benchmark,
                    task=task,
                    video=str(found),
                    question=question,
                    answer=row["A"],
                    frame_rule=cfg.frames.rule,
                    extra=extra,
                )
            )
    return items


def _qa_file(cfg: EvalConfig) -> tuple[str, Path]:
    if len(cfg.question_files) != 1:
        raise BenchmarkDataError(f"{cfg.layout}: question_files must name exactly one file, got {cfg.question_files}")
    task, rel = next(iter(cfg.question_files.items()))
    return task, _path(cfg, rel)


def read_msvd(cfg: EvalConfig) -> list[EvalItem]:
    """MSVD-QA test_qa.json: video_name|video, question_id|id, question, answer; video = video_dir/video_name."""
    task, path = _qa_file(cfg)
    items = []
    for i, row in enumerate(_load_json(path, "MSVD-QA question file")):
        _require(row, ("question", "answer"), f"{path} item {i}")
        name = row.get("video_name", row.get("video"))
        qid = row.get("question_id", row.get("id", i))
        if name is None:
            raise BenchmarkDataError(f"{path} item {i}: missing field 'video_name' (or 'video')")
        items.append(
            EvalItem(
                id=str(qid),
                index=i,
                benchmark=cfg.benchmark,
                task=task,
                video=str(_path(cfg, cfg.video_dir) / str(name)),
                question=row["question"],
                answer=str(row["answer"]),
                frame_rule=cfg.frames.rule,
                extra={"question_id": qid},
            )
        )
    return items


def read_msrvtt(cfg: EvalConfig) -> list[EvalItem]:
    """MSRVTT-QA test_qa.json: video_id, question, answer; id = running index from 1; video = {video_id}.mp4."""
    task, path = _qa_file(cfg)
    items = []
    for i, row in enumerate(_load_json(path, "MSRVTT-QA question file")):
        _require(row, ("video_id", "question", "answer"), f"{path} item {i}")
        items.append(
            EvalItem(
                id=str(i + 1),
                index=i,
                benchmark=cfg.benchmark,
                task=task,
                video=str(_path(cfg, cfg.video_dir) / f"{row['video_id']}.mp4"),
                question=row["question"],
                answer=str(row["answer"]),
                frame_rule=cfg.frames.rule,
                extra={"question_id": i + 1},
            )
        )
    return items


def read_anet(cfg: EvalConfig) -> list[EvalItem]:
    """ActivityNet-QA: test_q.json {question_id, video_name, question} + test_a.json {answer} aligned by index.

    Video = video_dir/"v_"+video_name; the original adds no extension (docs/faithfulness.md Q10): with
    anet_try_extensions the first
    existing name+ext is used when the bare name does not exist.
    """
    task, qpath = _qa_file(cfg)
    questions = _load_json(qpath, "ActivityNet-QA question file")
    apath = _path(cfg, cfg.answer_file)
    answers = _load_json(apath, "ActivityNet-QA answer file")
    if len(answers) < len(questions):
        raise BenchmarkDataError(f"{apath}: {len(answers)} answers for {len(questions)} questions in {qpath}")
    video_dir = _path(cfg, cfg.video_dir)
    items = []
    for i, row in enumerate(questions):
        _require(row, ("question_id", "video_name", "question"), f"{qpath} item {i}")
        _require(answers[i], ("answer",), f"{apath} item {i}")
        name = cfg.anet_video_prefix + str(row["video_name"])
        video = video_dir / name
        if cfg.anet_try_extensions and not video.exists():
            video = _find_video(video_dir, name, cfg.video_extensions) or video
        items.append(
            EvalItem(
                id=str(row["question_id"]),
                index=i,
                benchmark=cfg.benchmark,
                task=task,
                video=str(video),
                question=row["question"],
                answer=str(answers[i]["answer"]),
                frame_rule=cfg.frames.rule,
                extra={"question_id": row["question_id"]},
            )
        )
    return items


READERS: dict[str, Callable[[EvalConfig], list[EvalItem]]] = {
    "mvbench": read_mvbench,
    "vcgbench": read_vcgbench,
    "msvd": read_msvd,
    "msrvtt": read_msrvtt,
    "anet": read_anet,
}


def load_items(cfg: EvalConfig) -> list[EvalItem]:
    """Read the benchmark named by cfg.layout; ids made unique ("#k" suffix on repeats), order = file order."""
    if not cfg.data_root:
        raise BenchmarkDataError("data_root is not set (pass data_root=DIR on the command line)")
    items = READERS[cfg.layout](cfg)
    seen: dict[str, int] = {}
    for pos, item in enumerate(items):
        item.index = pos
        if item.id in seen:
            seen[item.id] += 1
            item.id = f"{item.id}#{seen[item.id]}"
        else:
            seen[item.id] = 0
    if cfg.limit > 0:
        items = items[: cfg.limit]
    logger.info("%s: %d items from %s", cfg.benchmark, len(items), cfg.data_root)
    return items
