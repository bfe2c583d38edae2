"""`python -m stllm bench data [--videos DIR]` -> a table of clips/s: our read+sample+transform vs the raw decoder.

For every video in the folder, at 16 and 64 frames: (1) read_clip + FrameSampling(uniform_middle) + the
evaluation transform (docs/original.md §7.1) with the exact Pillow resize and (1b) with the fast torch resize, (2) the
raw
decord call alone for the same indices (open + get_batch), (3) decoding every frame of the file. The time
ratio (1)/(2) shows what our pipeline adds to decoding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from stllm.data.sampling import FrameSampling, frame_indices
from stllm.data.transforms import EvalTransform
from stllm.data.video import VIDEO_EXTS, read_clip


def _best_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each function over `repeats` interleaved rounds (robust on a shared machine)."""
    for fn in fns.values():
        fn()  # warm-up: file cache, lazy imports
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bench_video(path: str, num_frames: int, repeats: int, size: int, threads: int) -> dict[str, float]:
    """Best seconds per clip of each measurement for one video and frame count."""
    import decord

    exact, fast = EvalTransform(size, resize="pil"), EvalTransform(size, resize="torch")
    sampling = FrameSampling(num_frames=num_frames, mode="uniform_middle")
    vr = decord.VideoReader(path, num_threads=threads)
    indices = frame_indices(sampling, len(vr), vr.get_avg_fps())
    total = len(vr)
    del vr

    def ours() -> object:
        return exact(read_clip(path, sampling, backend="decord", num_threads=threads).frames)

    def ours_fast() -> object:
        return fast(read_clip(path, sampling, backend="decord", num_threads=threads).frames)

    def raw() -> object:
        return decord.VideoReader(path, num_threads=threads).get_batch(indices).asnumpy()

    def every_frame() -> object:
        reader = decord.VideoReader(path, num_threads=threads)
        for _ in range(total):
            reader.next()  # decode all frames without keeping them (64 full frames x 1000s do not fit)
        return None

    times = _best_seconds({"ours": ours, "fast": ours_fast, "raw": raw}, repeats)
    times.update(_best_seconds({"all": every_frame}, max(1, repeats // 3)))
    times["total"] = total
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm bench data", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--videos", required=True, help="folder of videos")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="decord threads (the original used 1)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (1: one core, as decord)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.torch_threads)
    videos = sorted(p for p in Path(args.videos).glob("*") if p.suffix.lower() in VIDEO_EXTS)
    if not videos:
        print(f"bench data: no videos in {args.videos}", file=sys.stderr)
        return 2
    header = (
        f"{'video':<14}{'frames':>7}{'T':>5}{'pil clip/s':>12}{'torch clip/s':>14}{'raw clip/s':>12}"
        f"{'all-frames clip/s':>19}{'pil/raw':>9}{'torch/raw':>11}"
    )
    print(header)
    print("-" * len(header))
    ratios, fast_ratios = [], []
    for video in videos:
        for n in args.frames:
            r = bench_video(str(video), n, args.repeats, args.size, args.threads)
            ratios.append(r["ours"] / r["raw"])
            fast_ratios.append(r["fast"] / r["raw"])
            print(
                f"{video.stem:<14}{int(r['total']):>7}{n:>5}{1 / r['ours']:>12.2f}{1 / r['fast']:>14.2f}"
                f"{1 / r['raw']:>12.2f}{1 / r['all']:>19.2f}{ratios[-1]:>9.2f}{fast_ratios[-1]:>11.2f}"
            )
    print(
        f"time ratio pipeline/raw decode (decord threads={args.threads}, torch threads={args.torch_threads}, "
        f"eval transform at {args.size}, best of {args.repeats}): "
        f"pil (exact) median {statistics.median(ratios):.2f} max {max(ratios):.2f}; "
        f"torch resize median {statistics.median(fast_ratios):.2f} max {max(fast_ratios):.2f}"
    )
    return 0
