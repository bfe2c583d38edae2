"""(FrameSampling, total frames, fps) -> the list of frame indices to decode; one spec for train, eval and demos.

Modes (docs/design.md decision 5; every rule below reproduces the original code, including its quirks):
- ``rand``: training sampling of docs/original.md §4.4 (``get_frame_indices(sample="rand")``, quirk Q15 kept).
- ``middle``: docs/original.md §4.4 ``sample="middle"`` -> ``(b_k + b_{k+1} - 1) // 2`` (``fix_start`` -> ``b_k +
fix_start``).
- ``uniform_middle``: the evaluation/demo ``load_video`` of docs/original.md §7.1 (segment midpoints of
``(total-1)/n``).
  It differs from ``middle`` (e.g. 10 frames, 4 asked: middle [0,3,5,8] vs uniform_middle [1,3,5,8]).
- ``mvbench``: MVBench ``get_index`` of docs/original.md §7.2 (start/end bounds, fps-1 rule when ``num_frames == 0``).
- ``fps``: frames at ``fps`` frames per second (docs/original.md §4.4 ``fps{x}``), clamped to [min_frames, max_frames].
- ``all``: every frame of the clip (or of its window); num_frames is ignored (what DecodedVideoCache keeps).

Rounding: the original used Python ``round`` / ``np.round`` on floats (both round half to even) and
``np.linspace(...).astype(int)``; the same calls are used here so halves fall the same way.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

MODES = ("rand", "middle", "uniform_middle", "mvbench", "fps", "all")

Rng = random.Random | np.random.Generator | None


@dataclass
class FrameSampling:
    """How many frames to take from a clip and where.

    num_frames: frames asked (``rand``/``middle``/``uniform_middle``; for ``mvbench`` 0 selects the fps-1 rule).
    fps: output frame rate of ``fps`` mode; min_frames/max_frames clamp ``fps`` and ``mvbench`` fps-1 counts.
    start/end: clip window in seconds (None = whole video). fix_start: offset inside each segment (``middle``).
    fallback_rng: where ``rand``'s fallback (a segment of one frame, docs/original.md §4.4) draws its frames:
    "stllm" (default) from the caller's rng, so a seeded dataset item always gets the same frames; "original"
    from NumPy's global state with ``np.random.permutation(vlen)[:n]``, sorted, as the original did
    (docs/faithfulness.md, "Random streams and decoding").
    """

    num_frames: int = 16
    mode: str = "rand"
    fps: float = 1.0
    min_frames: int = 4
    max_frames: int = 16
    start: float | None = None
    end: float | None = None
    fix_start: int | None = None
    fallback_rng: str = "stllm"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown frame sampling mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.num_frames < 0 or (self.num_frames == 0 and self.mode not in ("mvbench", "all")):
            raise ValueError(f"num_frames must be > 0 for mode {self.mode!r} (0: mvbench's fps-1 rule, or mode all)")
        if self.fallback_rng not in ("stllm", "original"):
            raise ValueError(f"fallback_rng must be 'stllm' or 'original', got {self.fallback_rng!r}")
        if self.mode == "fps" and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

    def with_window(self, start: float | None, end: float | None) -> FrameSampling:
        """A copy with a clip window (seconds), e.g. from an annotation's start/end."""
        return dataclasses.replace(self, start=start, end=end)

    def describe(self) -> dict[str, Any]:
        """Plain dict recorded beside results and checkpoints."""
        return dataclasses.asdict(self)


def _choice(rng: Rng, lo: int, hi: int) -> int:
    """Uniform integer in range(lo, hi); raises IndexError on an empty range like random.choice."""
    if hi <= lo:
        raise IndexError("empty range")
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(lo, hi))
    return (rng or random.Random()).choice(range(lo, hi))


def _distinct_sorted(rng: Rng, vlen: int, n: int) -> list[int]:
    if isinstance(rng, np.random.Generator):
        return sorted(int(i) for i in rng.permutation(vlen)[:n])
    return sorted((rng or random.Random()).sample(range(vlen), n))


def segment_indices(
    num_frames: int,
    vlen: int,
    mode: str,
    rng: Rng = None,
    fix_start: int | None = None,
    fallback_rng: str = "stllm",
) -> list[int]:
    """docs/original.md §4.4 ``get_frame_indices`` for ``rand``/``middle``: indices in [0, vlen), padded to
    num_frames. ``fallback_rng="original"`` draws the fallback from NumPy's global state (FrameSampling)."""
    if vlen <= 0:
        raise ValueError(f"cannot sample frames from a clip of {vlen} frames")
    n = min(num_frames, vlen)
    bounds = np.linspace(0, vlen, n + 1).astype(int)
    ranges = [(int(bounds[k]), int(bounds[k + 1]) - 1) for k in range(n)]
    if mode == "rand":
        try:
            # docs/faithfulness.md Q15 [KEEP]: range(b_k, b_{k+1}-1) excludes each segment's last frame; a 1-frame
            # segment
            # makes the range empty and the original fell back to n distinct random frames.
            idx = [_choice(rng, lo, hi) for lo, hi in ranges]
        except IndexError:
            if fallback_rng == "original":  # the original: np.random.permutation(vlen)[:n], sorted (global state)
                idx = sorted(int(i) for i in np.random.permutation(vlen)[:n])
            else:
                idx = _distinct_sorted(rng, vlen, n)
    elif fix_start is not None:
        idx = [lo + fix_start for lo, _ in ranges]
    elif mode == "middle":
        idx = [(lo + hi) // 2 for lo, hi in ranges]
    else:
        raise ValueError(f"segment sampling has no mode {mode!r}")
    if len(idx) < num_frames:  # short video: pad by repeating the last index (docs/original.md §4.4)
        idx = idx + [idx[-1]] * (num_frames - len(idx))
    return idx


def uniform_middle_indices(num_frames: int, total: int) -> list[int]:
    """docs/original.md §7.1 ``load_video``: n = min(total, N), seg = (total-1)/n, (round(seg*i) + round(seg*(i+1))) //
    2."""
    n = min(total, num_frames)
    seg = float(total - 1) / n
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(n)]


def mvbench_indices(sampling: FrameSampling, total: int, fps: float, first_idx: int = 0) -> list[int]:
    """docs/original.md §7.2 ``get_index``; returns native frame numbers (first_idx = 1 for 1-based frame folders).

    max_frame is the last valid frame number (total-1 for a video, total for a 1-based folder).
    """
    max_frame = first_idx + total - 1
    if sampling.start is not None and sampling.end is not None:
        bounded, start, end = True, sampling.start, sampling.end
    else:
        bounded, start, end = False, -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    if sampling.num_frames > 0:
        n = sampling.num_frames
    else:  # fps-1 rule: one frame per second of the clip, floored, clamped to [min_frames, max_frames]
        seconds = (end - start) if bounded else max_frame / fps
        n = min(max(int(seconds), sampling.min_frames), sampling.max_frames)
    seg = float(end_idx - start_idx) / n
    return [int(start_idx + seg / 2 + np.round(seg * i)) for i in range(n)]


def fps_indices(sampling: FrameSampling, vlen: int, video_fps: float) -> list[int]:
    """docs/original.md §4.4 ``fps{x}``: frame centres every 1/fps s, then clamped to [min_frames, max_frames].

    The original only capped at max frames (truncating the tail); a clip too short for min_frames here gets
    min_frames evenly spaced indices instead (the original would have returned fewer frames).
    """
    duration = float(vlen) / video_fps
    delta = 1.0 / sampling.fps
    seconds = np.arange(delta / 2, duration + delta / 2, delta)
    idx = [int(i) for i in np.around(seconds * video_fps).astype(int) if i < vlen]
    if len(idx) > sampling.max_frames:
        idx = idx[: sampling.max_frames]  # original: frame_indices[:max_num_frames]
    if len(idx) < sampling.min_frames:
        idx = uniform_middle_indices(sampling.min_frames, vlen)
        idx = idx + [idx[-1]] * (sampling.min_frames - len(idx))
    return idx


def frame_indices(
    sampling: FrameSampling, total_frames: int, video_fps: float, rng: Rng = None, first_idx: int = 0
) -> list[int]:
    """0-based frame positions in the source to decode (len == frames returned; may repeat when padded).

    For ``rand``/``middle``/``fps`` a [start, end] window follows docs/original.md §4.4 ``read_frames_decord``:
    vlen = int((end-start)*fps), indices offset by int(start*fps). Indices past the end of the file (a window
    longer than the video) are clamped to the last frame, where the original raised and skipped the sample.
    """
    if total_frames <= 0:
        raise ValueError("cannot sample frames from a clip with 0 frames")
    if sampling.mode == "uniform_middle":
        return uniform_middle_indices(sampling.num_frames, total_frames)
    if sampling.mode == "mvbench":
        return [i - first_idx for i in mvbench_indices(sampling, total_frames, video_fps, first_idx)]
    vlen, offset = total_frames, 0
    if sampling.start is not None and sampling.end is not None:
        vlen = max(1, int((sampling.end - sampling.start) * video_fps))
        offset = int(sampling.start * video_fps)
    if sampling.mode == "all":
        idx = list(range(vlen))
    elif sampling.mode == "fps":
        idx = fps_indices(sampling, vlen, video_fps)
    else:
        idx = segment_indices(sampling.num_frames, vlen, sampling.mode, rng, sampling.fix_start, sampling.fallback_rng)
    return [min(max(i + offset, 0), total_frames - 1) for i in idx]


def fps_or_default(fps: float | None, default: float) -> float:
    """A usable frame rate: the container's when finite and positive, else `default`."""
    return fps if fps is not None and math.isfinite(fps) and fps > 0 else default
