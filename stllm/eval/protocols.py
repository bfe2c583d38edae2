"""Official annotation files under data_root -> list[EvalItem] in a stable order with stable unique ids
(docs/original.md §7.2-7.4).

One reader per layout (a plain dict at the bottom): mvbench (MVBench/TVBench per-task json), vcgbench (Video-ChatGPT
generic/temporal/consistency files), msvd, msrvtt, anet.

What is an error of the whole input and what is an item error (docs/reliability.md, "Evaluation, phase 1"):
- BenchmarkDataError (one line naming the file, and the item index where there is one; nothing is run): a missing
  annotation file or video folder, a file that is not JSON or not a list of objects, an item without a required
  field or with a field of the wrong type (question not a string, candidates not a list of strings, start "abc").
  Such a file is not the benchmark's official file, so no number computed from it would be comparable.
- Item error (EvalItem.error, the item is recorded as an error with this reason and the rest goes on): an item
  whose fields are well-formed but cannot be answered faithfully, i.e. an MVBench window whose end lies before its
  start (the original would read its frames reversed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stllm.config import ConfigError
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
    start: float | None = None
    end: float | None = None
    media_type: str = "video"  # video | frame | gif
    media_fps: float = 0.0  # frame folders / gifs (docs/original.md §7.2: 3 for tvqa frames, 25 for gifs)
    frame_rule: str = "uniform_middle"
    extra: dict[str, Any] = field(default_factory=dict)
    # reason this item cannot be answered (an item error, counted, never scored); also kept in
    # extra["item_error"] so that the reason travels with the prediction record to phase 2
    error: str | None = None


def _path(cfg: EvalConfig, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(cfg.data_root) / p


def _load_json(path: Path, what: str, hint: str = "") -> list[Any]:
    """A JSON file holding a list of objects -> that list (BenchmarkDataError naming the file otherwise)."""
    if not path.is_file():
        raise BenchmarkDataError(f"{what} not found: {path}{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BenchmarkDataError(f"{what} is not valid JSON: {path}: {err}") from err
    if not isinstance(data, list):
        raise BenchmarkDataError(f"{what} {path}: expected a list of items, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise BenchmarkDataError(f"{path} item {i}: expected an object, got {type(row).__name__}")
    return data


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkDataError(f"{where}: missing field(s) {missing}; has {sorted(row)}")


def _text(row: dict, key: str, where: str, names: bool = False) -> str:
    """A string field (names=True: a video name or id may also be a JSON number, as in some QA releases)."""
    value = row[key]
    if isinstance(value, str) or (names and isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise BenchmarkDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__} {value!r:.40}")


def _seconds(row: dict, key: str, where: str) -> float:
    value = row[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise BenchmarkDataError(f"{where}: field {key!r} must be a number of seconds, got {value!r:.40}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise BenchmarkDataError(f"{where}: field {key!r} must be a finite number of seconds, got {value!r:.40}")
    return out


def _dir_exists(folder: Path, what: str, hint: str) -> None:
    """A missing video folder fails the run at once (every item would fail) with a hint at the override."""
    if not folder.is_dir():
        raise BenchmarkDataError(f"{what} not found: {folder}{hint}")


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
                # Path("") / stem = stem: relative to data_root, never "/stem" at the filesystem root
                media = str(Path(cfg.discovered_media_root) / f.stem)
                tasks.append(TaskSpec(name=name, json=f.name, media=media))
        # when discovering, a table task whose json is absent is skipped with a warning (TVBench releases differ)
        for t in tasks:
            if not (anno / t.json).is_file():
                logger.warning("task %r skipped: %s not found", t.name, anno / t.json)
        tasks = [t for t in tasks if (anno / t.json).is_file()]
    if cfg.only_tasks:
        tasks = _select(tasks, cfg.only_tasks)
    return tasks


def _select(tasks: list[TaskSpec], wanted: list[str]) -> list[TaskSpec]:
    """only_tasks: task names or json stems (case-insensitive), table order kept; an unknown one is a ConfigError."""
    key = {}
    for t in tasks:
        key[t.name.lower()] = t
        key[Path(t.json).stem.lower()] = t
    unknown = [w for w in wanted if str(w).lower() not in key]
    if unknown:
        valid = ", ".join(Path(t.json).stem for t in tasks)
        raise ConfigError(f"only_tasks: unknown task(s) {unknown}; valid: {valid}")
    chosen = {id(key[str(w).lower()]) for w in wanted}
    return [t for t in tasks if id(t) in chosen]


_SUBSET_HINT = " (to run a subset of the tasks, pass only_tasks=[name,...]; docs/evaluation.md)"


def read_mvbench(cfg: EvalConfig) -> list[EvalItem]:
    """MVBench/TVBench: anno_dir/<task json> items {video, question, candidates, answer[, start, end]}
    (docs/original.md §7.2)."""
    items: list[EvalItem] = []
    anno = _path(cfg, cfg.anno_dir)
    hint = f" (data_root={cfg.data_root} should hold {cfg.anno_dir}/ and the media folders)"
    _dir_exists(anno, "annotation folder", hint)
    tasks = _mvbench_tasks(cfg)
    # a task whose media folder is missing only warns (its items become counted item errors); when no task has
    # its folder, every item would fail: that is a wrong data_root, reported at once
    absent = [t for t in tasks if not _path(cfg, t.media).is_dir()]
    if tasks and len(absent) == len(tasks):
        _dir_exists(_path(cfg, tasks[0].media), f"media folder of task {tasks[0].name!r} (and of every other task)", "")
    for t in absent:
        logger.warning("media folder of task %r not found: %s (its items will be item errors)", t.name, t.media)
    for task in tasks:
        path = _path(cfg, cfg.anno_dir) / task.json
        rows = _load_json(path, f"task {task.name!r} annotation", _SUBSET_HINT)
        stem = Path(task.json).stem
        for i, row in enumerate(rows):
            where = f"{path} item {i}"
            _require(row, ("video", "question", "candidates", "answer"), where)
            video, question = _text(row, "video", where), _text(row, "question", where)
            answer = _text(row, "answer", where)
            cands = row["candidates"]
            if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
                raise BenchmarkDataError(f"{where}: field 'candidates' must be a list of strings, got {cands!r:.60}")
            start = end = None
            error = None
            if task.bound:
                _require(row, ("start", "end"), where)
                start, end = _seconds(row, "start", where), _seconds(row, "end", where)
                if end < start:  # the original's get_index would read the window's frames in reverse order
                    error = f"{where}: end {end:g} s lies before start {start:g} s"
                    logger.warning("item error: %s", error)
            question_text, gt = mcqa_question(question, cands, answer)
            media = _path(cfg, task.media) / video
            extra: dict[str, Any] = {"raw_question": question, "raw_answer": answer}
            if error:
                extra["item_error"] = error
            items.append(
                EvalItem(
                    id=f"{stem}/{i}",
                    index=len(items),
                    benchmark=cfg.benchmark,
                    task=task.name,
                    video=str(media),
                    question=question_text,
                    answer=gt,
                    candidates=list(cands),
                    start=start,
                    end=end,
                    media_type=task.data_type,
                    media_fps=task.fps,
                    frame_rule=cfg.frames.rule,
                    extra=extra,
                    error=error,
                )
            )
    return items


def _find_video(video_dir: Path, name: str, extensions: list[str]) -> Path | None:
    for ext in extensions:
        cand = video_dir / f"{name}{ext}"
        if cand.exists():
            return cand
    return None


_VIDEO_DIR_HINT = " (annotations and videos in separate folders: add video_dir=VIDEO_FOLDER; docs/evaluation.md)"


def _video_dir(cfg: EvalConfig) -> Path:
    folder = _path(cfg, cfg.video_dir)
    _dir_exists(folder, f"{cfg.benchmark or cfg.layout} video folder (video_dir={cfg.video_dir!r})", _VIDEO_DIR_HINT)
    return folder


def _named_video(video_dir: Path, name: str, extensions: list[str], default_ext: str = "") -> Path:
    """video_dir/name if it exists (a name that carries its extension), else the first existing name+ext of
    `extensions`; none: video_dir/(name + default_ext), the original's path, which then fails as a counted item
    error naming it."""
    exact = video_dir / name
    if exact.exists():
        return exact
    return _find_video(video_dir, name, extensions) or video_dir / f"{name}{default_ext}"


def read_vcgbench(cfg: EvalConfig) -> list[EvalItem]:
    """Video-ChatGPT Benchmarking_QA files: {video_name, Q, A} (consistency: Q1, Q2, A) (docs/original.md §7.3).

    Video = first existing {video_dir}/{video_name}{ext}. None found: a path that does not exist (the item then
    fails as a MediaError and is counted), or, with vcgbench_keep_previous_video (docs/faithfulness.md Q29), the
    previous video.
    """
    video_dir = _video_dir(cfg)
    items: list[EvalItem] = []
    previous: Path | None = None
    files = dict(cfg.question_files)
    if cfg.only_tasks:
        unknown = [t for t in cfg.only_tasks if t not in files]
        if unknown:
            raise ConfigError(f"only_tasks: unknown task(s) {unknown}; valid: {', '.join(files)}")
        files = {t: rel for t, rel in files.items() if t in cfg.only_tasks}
    for task, rel in files.items():
        path = _path(cfg, rel)
        rows = _load_json(path, f"VCGBench {task} question file")
        for i, row in enumerate(rows):
            keys = ("video_name", "Q1", "Q2", "A") if task == "consistency" else ("video_name", "Q", "A")
            where = f"{path} item {i}"
            _require(row, keys, where)
            for k in keys:
                _text(row, k, where, names=k == "video_name")
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
    rows = _load_json(path, "MSVD-QA question file")
    video_dir = _video_dir(cfg)
    items = []
    for i, row in enumerate(rows):
        where = f"{path} item {i}"
        _require(row, ("question", "answer"), where)
        name = row.get("video_name", row.get("video"))
        qid = row.get("question_id", row.get("id", i))
        if name is None:
            raise BenchmarkDataError(f"{where}: missing field 'video_name' (or 'video')")
        name = _text({"video_name": name}, "video_name", where, names=True)
        items.append(
            EvalItem(
                id=str(qid),
                index=i,
                benchmark=cfg.benchmark,
                task=task,
                # names that carry no extension get the first existing one of video_extensions
                video=str(_named_video(video_dir, name, cfg.video_extensions)),
                question=_text(row, "question", where),
                answer=_text(row, "answer", where, names=True),
                frame_rule=cfg.frames.rule,
                extra={"question_id": qid},
            )
        )
    return items


def read_msrvtt(cfg: EvalConfig) -> list[EvalItem]:
    """MSRVTT-QA test_qa.json: video_id, question, answer; id = running index from 1; video = {video_id}.mp4."""
    task, path = _qa_file(cfg)
    rows = _load_json(path, "MSRVTT-QA question file")
    video_dir = _video_dir(cfg)
    items = []
    for i, row in enumerate(rows):
        where = f"{path} item {i}"
        _require(row, ("video_id", "question", "answer"), where)
        name = _text(row, "video_id", where, names=True)
        # the original: {video_id}.mp4; other extensions of video_extensions are tried when that file is absent
        exts = [".mp4"] + [e for e in cfg.video_extensions if e != ".mp4"]
        video = _find_video(video_dir, name, exts) or _named_video(video_dir, name, [], ".mp4")
        items.append(
            EvalItem(
                id=str(i + 1),
                index=i,
                benchmark=cfg.benchmark,
                task=task,
                video=str(video),
                question=_text(row, "question", where),
                answer=_text(row, "answer", where, names=True),
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
    video_dir = _video_dir(cfg)
    items = []
    for i, row in enumerate(questions):
        where = f"{qpath} item {i}"
        _require(row, ("question_id", "video_name", "question"), where)
        _require(answers[i], ("answer",), f"{apath} item {i}")
        name = cfg.anet_video_prefix + _text(row, "video_name", where, names=True)
        _text(row, "question", where)
        _text(answers[i], "answer", f"{apath} item {i}", names=True)
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
