"""Seed -> procedurally drawn video-QA set (real mp4 files) in the VideoChat2-IT and MVBench layouts.

Temporal tasks are built so that their two answers are time reversals of each other: a video of one class is the
other class played backwards, with the same random geometry. Any model that is blind to frame order (mean
pooling over frames) therefore sees identically distributed inputs for both answers and cannot beat chance;
a model that keeps every frame's tokens can. The colour task is static: pooling solves it.

Every clip also comes described in words, one short phrase per frame ("red three": the square's colour and
its column out of four, "none none" for an empty frame). That is the same scene told as text, used to pretrain
the quickstart's tiny LLM (stllm/synthetic_text.py), as Vicuna was pretrained on text before ST-LLM saw video.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
BACKGROUND = (16, 16, 16)
COLUMNS = ("one", "two", "three", "four")  # the frame split into four columns, left to right: one column per
# column of ViT patches at the quickstart's 56 px and 14 px patches, so a column is what a patch position says
EMPTY_FRAME = "none none"
LETTERS = "ABCDEFGH"  # how MVBench labels the options


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    question: str
    candidates: list[str]
    answer: str
    words: list[str]  # per frame, "<colour> <column>" of the visible square, or EMPTY_FRAME


def _canvas(t: int, size: int) -> np.ndarray:
    """-> uint8 (t, size, size, 3) filled with BACKGROUND (one row tiled, then copied whole rows at a time:
    some 20x faster than copying a broadcast pixel, which the language pretraining and alignment feel)."""
    row = np.tile(np.array(BACKGROUND, np.uint8), size)  # (size * 3,)
    return np.ascontiguousarray(np.broadcast_to(row, (t * size, size * 3))).reshape(t, size, size, 3)


def _square(frame: np.ndarray, x: float, y: float, half: int, colour: tuple[int, int, int]) -> None:
    size = frame.shape[0]
    x0, x1 = int(round(x)) - half, int(round(x)) + half
    y0, y1 = int(round(y)) - half, int(round(y)) + half
    frame[max(y0, 0) : max(min(y1, size), 0), max(x0, 0) : max(min(x1, size), 0)] = colour


def _describe(colour: str | None, x: float, half: int, size: int) -> str:
    """A square's frame in words: its colour and the column of its visible part, or EMPTY_FRAME if off-canvas."""
    lo, hi = max(x - half, 0.0), min(x + half, float(size))
    if colour is None or hi <= lo:
        return EMPTY_FRAME
    column = min(int((lo + hi) / 2 / size * len(COLUMNS)), len(COLUMNS) - 1)
    return f"{colour} {COLUMNS[column]}"


def _path(t: int, start: float, end: float) -> np.ndarray:
    return np.linspace(start, end, t)


def _moving_square(xs: np.ndarray, y: float, half: int, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """One square per frame at x = xs[i] -> uint8 (T, size, size, 3)."""
    frames = _canvas(len(xs), size)
    for i, x in enumerate(xs):
        _square(frames[i], x, y, half, colour)
    return frames


def draw_direction(rng: random.Random, t: int, size: int) -> Clip:
    """A square moves left or right across the frame (temporal: the two classes are time reversals)."""
    half = size // 8
    name = rng.choice(list(COLOURS))
    a, b = rng.uniform(half, size * 0.35), rng.uniform(size * 0.65, size - half)
    y = rng.uniform(half, size - half)
    right = rng.random() < 0.5
    xs = _path(t, a, b) if right else _path(t, b, a)
    return Clip(
        _moving_square(xs, y, half, COLOURS[name], size),
        "Which direction does the square move?",
        ["left", "right"],
        "right" if right else "left",
        [_describe(name, x, half, size) for x in xs],
    )


def draw_order(rng: random.Random, t: int, size: int) -> Clip:
    """A red and a blue square, each visible for half of the clip: which one appears first?"""
    half = size // 8
    names = ["red", "blue"]
    first = rng.choice(names)
    second = names[1 - names.index(first)]
    spots = [(rng.uniform(half, size - half), rng.uniform(half, size - half)) for _ in range(2)]
    frames, words = _canvas(t, size), []
    for i in range(t):
        name, (x, y) = (first, spots[0]) if i < t // 2 else (second, spots[1])
        _square(frames[i], x, y, half, COLOURS[name])
        words.append(_describe(name, x, half, size))
    return Clip(frames, "Which square appears first?", ["red", "blue"], first, words)


def draw_enter_leave(rng: random.Random, t: int, size: int) -> Clip:
    """A square slides from outside the frame to its centre (enters) or from the centre out (leaves).

    It starts (or ends) far enough outside that the first (or last) third or so of the clip is empty, so the
    answer survives when some frames' tokens are dropped (dynamic masking keeps about half of them).
    """
    half = size // 8
    name = rng.choice(list(COLOURS))
    side = rng.choice([-1, 1])
    outside = size / 2 + side * (size / 2 + half + 1 + rng.uniform(0.3, 0.5) * size)
    centre = size / 2 + rng.uniform(-size / 8, size / 8)
    y = rng.uniform(half, size - half)
    enters = rng.random() < 0.5
    xs = _path(t, outside, centre) if enters else _path(t, centre, outside)
    return Clip(
        _moving_square(xs, y, half, COLOURS[name], size),
        "Does the square enter or leave the frame?",
        ["enters", "leaves"],
        "enters" if enters else "leaves",
        [_describe(name, x, half, size) for x in xs],
    )


def draw_colour(rng: random.Random, t: int, size: int) -> Clip:
    """Static control: the colour of a still square (pooling over frames loses nothing here); two options."""
    half = size // 6
    name, other = rng.sample(list(COLOURS), 2)
    x, y = rng.uniform(half, size - half), rng.uniform(half, size - half)
    frames = _canvas(t, size)
    for i in range(t):
        _square(frames[i], x, y, half, COLOURS[name])
    return Clip(frames, "What colour is the square?", [name, other], name, [_describe(name, x, half, size)] * t)


TASKS: dict[str, tuple[Callable[[random.Random, int, int], Clip], bool]] = {
    # task -> (drawer, depends on time order)
    "direction": (draw_direction, True),
    "order": (draw_order, True),
    "enter_leave": (draw_enter_leave, True),
    "colour": (draw_colour, False),
}


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (H * 3 // 2, W) planar YUV 4:2:0, BT.601 limited range (what decoders assume
    for yuv420p without colour metadata); chroma is the mean of each 2 x 2 block. H and W must be even."""
    x = img.astype(np.float64)
    y = 16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255
    u = 128 + (-37.797 * x[..., 0] - 74.203 * x[..., 1] + 112.0 * x[..., 2]) / 255
    v = 128 + (112.0 * x[..., 0] - 93.786 * x[..., 1] - 18.214 * x[..., 2]) / 255
    h, w = y.shape

    def half(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [np.clip(np.round(c), 0, 255).astype(np.uint8).reshape(-1) for c in (y, half(u), half(v))]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def write_mp4(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    """uint8 (T, H, W, 3) -> a lossless H.264 mp4 (yuv420p) written with PyAV: the same decoded pixels on every run.

    The colour conversion is ours and the encoding lossless (qp 0) because the usual route (swscale's RGB ->
    YUV, then x264 at crf 12) gave files that differed on every run in about 3% of the videos (a few pixels
    by up to 4 levels, measured), and through them the trained weights of the quickstart.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"qp": "0", "preset": "veryfast", "threads": "1"}
        for img in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(img), format="yuv420p")))
        container.mux(stream.encode(None))


def mcq(clip: Clip, rng: random.Random) -> tuple[str, list[str], str]:
    """Shuffle the options -> (question text in MVBench's qa_template, candidates, "(X) answer")."""
    options = clip.candidates[:]
    rng.shuffle(options)
    return mcq_in_order(clip, options)


def mcq_in_order(clip: Clip, options: list[str]) -> tuple[str, list[str], str]:
    """The options in the given order -> (question text in MVBench's qa_template, candidates, "(X) answer")."""
    text = f"Question: {clip.question}\nOptions:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return text, options, f"({LETTERS[options.index(clip.answer)]}) {clip.answer}"


def build_dataset(
    root: str | Path,
    seed: int = 0,
    train_per_task: int = 200,
    eval_per_task: int = 50,
    frames: int = 24,
    size: int = 64,
    hold: int = 3,
) -> dict[str, Path]:
    """Write videos and annotations under root; -> paths of the training JSON and the MVBench-style folder.

    Each video has `frames` frames: frames // hold drawn ones, each held for `hold` frames. The default, 8
    drawn frames held for 3 (24 frames), is the one layout near there where both samplers of an 8-frame model
    take every drawn frame exactly once: training's ``rand`` (segments of 3, the last frame excluded:
    docs/faithfulness.md Q15)
    and MVBench's get_index (indices 1, 4, 7, 10, 13, 15, 18, 21). A clip and its time reversal then give the
    model the same frames in reverse order, so what a pooling model sees is identical for both answers. Drawn
    frame by frame at 16, the samplers take about every other frame (MVBench: 0, 2, 4, 6, 8, 9, 11, 13), a clip
    and its reversal show different parts of the path, and the pooling model read enter/leave at 58-74%
    (measured).
    root/train/videos/*.mp4 + root/train/annotations.json (VideoChat2-IT: video, QA=[{i, q, a}]);
    root/eval/videos/*.mp4 + root/eval/json/<task>.json (MVBench: video, question, candidates, answer).
    Training answers read "Best option:(X) answer": the MVBench protocol ends the prompt with "Best option:(".
    A training video carries one QA turn per rotation of its options (both orders, with two), and training
    reads one turn at random per visit (docs/faithfulness.md Q14): the letter cannot be learnt per video, only from the
    option list (with one fixed order per video, a model wrote the right answer text for 100% of held-out
    direction questions but the right letter for 80%, measured).
    """
    if hold < 1 or frames % hold:
        raise ValueError(f"frames ({frames}) must be a multiple of hold ({hold})")
    root = Path(root)
    rng = random.Random(seed)
    train_items, eval_items = [], {task: [] for task in TASKS}
    for task, (draw, _) in TASKS.items():
        for split, count in (("train", train_per_task), ("eval", eval_per_task)):
            for k in range(count):
                clip = draw(rng, frames // hold, size)
                name = f"{task}_{k:04d}.mp4"
                write_mp4(np.repeat(clip.frames, hold, axis=0), root / split / "videos" / name)
                text, options, gt = mcq(clip, rng)
                if split == "train":  # one QA turn per option order; training takes one at random per visit
                    turns = [mcq_in_order(clip, options[r:] + options[:r]) for r in range(len(options))]
                    train_items.append(
                        {
                            "video": name,
                            "QA": [{"i": "", "q": q, "a": f"Best option:{a}"} for q, _, a in turns],
                            "task": task,
                        }
                    )
                else:
                    eval_items[task].append(
                        {"video": name, "question": clip.question, "candidates": options, "answer": clip.answer}
                    )
    rng.shuffle(train_items)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "annotations.json").write_text(json.dumps(train_items, indent=1))
    (root / "eval" / "json").mkdir(parents=True, exist_ok=True)
    for task, items in eval_items.items():
        (root / "eval" / "json" / f"{task}.json").write_text(json.dumps(items, indent=1))
    return {
        "train_annotations": root / "train" / "annotations.json",
        "train_media": root / "train" / "videos",
        "eval_json": root / "eval" / "json",
        "eval_media": root / "eval" / "videos",
    }


def corpus_words() -> list[str]:
    """Every question, option and answer text of the tasks and every frame word: extra corpus for the tiny
    tokenizers (so each colour and column name is one token)."""
    rng = random.Random(0)
    lines = [" ".join(f"{c} {col}" for c in COLOURS for col in COLUMNS) + f" {EMPTY_FRAME}"] * 10
    for draw, _ in TASKS.values():
        clip = draw(rng, 2, 16)
        for _ in range(4):
            text, _, gt = mcq(clip, rng)
            lines.append(f"{text} ###Assistant: Best option:{gt}")
    return lines * 4
