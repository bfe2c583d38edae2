"""Output folder -> a small VideoChat2-IT-format dataset for tiny CPU training runs (drawn videos or given ones).

`python -m stllm.train.toydata OUT [--videos DIR] [--num N]` writes OUT/anno/toy.json and, for drawn videos,
OUT/videos/*.mp4: a coloured square moving left or right ("Which way does the square move?"). With
`--videos DIR`, every video of DIR gets a few questions answered by its file name (enough to memorise).
Then: `python -m stllm train configs/train/tiny.yaml data.data_root=OUT`.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Sequence

import numpy as np

ANNOTATION = "anno/toy.json"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def draw_clip(direction: str, colour: tuple[int, int, int], frames: int = 12, size: int = 64) -> np.ndarray:
    """A square crossing the frame left->right or right->left -> uint8 (T, size, size, 3)."""
    clip = np.full((frames, size, size, 3), 30, np.uint8)
    side = size // 4
    for t in range(frames):
        x = int((size - side) * t / (frames - 1))
        x = x if direction == "right" else size - side - x
        clip[t, size // 2 - side // 2: size // 2 + side // 2, x: x + side] = colour
    return clip


def write_mp4(path: Path, clip: np.ndarray, fps: int = 8) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 via PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = clip.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_drawn_dataset(root: str | Path, num: int = 16, seed: int = 0) -> Path:
    """root -> root/videos/NNN.mp4 + root/anno/toy.json (media paths relative to root); returns the JSON path."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = []
    for i in range(num):
        direction = "left" if i % 2 else "right"
        name = rng.choice(sorted(COLOURS))
        rel = f"videos/{i:03d}.mp4"
        write_mp4(root / rel, draw_clip(direction, COLOURS[name]))
        items.append({"video": rel, "QA": [
            {"i": "", "q": "Which way does the square move?", "a": f"The {name} square moves {direction}."}]})
    return _write_annotation(root, items)


def write_video_dataset(root: str | Path, videos: str | Path) -> Path:
    """Existing videos -> root/anno/toy.json whose answers name each video (media paths absolute)."""
    files = sorted(p for p in Path(videos).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos}")
    questions = ["What is this video about?", "Describe the video.", "What is shown?"]
    items = [{"video": str(p.resolve()), "QA": [{"i": "", "q": q, "a": f"This video shows {p.stem.lower()}."}
                                                 for q in questions]} for p in files]
    return _write_annotation(Path(root), items)


def _write_annotation(root: Path, items: list[dict]) -> Path:
    path = root / ANNOTATION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stllm.train.toydata", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="dataset root (pass it as data.data_root)")
    parser.add_argument("--videos", help="use the videos of this folder instead of drawn ones")
    parser.add_argument("--num", type=int, default=16, help="number of drawn videos")
    args = parser.parse_args(argv)
    path = write_video_dataset(args.out, args.videos) if args.videos else write_drawn_dataset(args.out, args.num)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
