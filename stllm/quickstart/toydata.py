"""Output folder -> a small VideoChat2-IT-format dataset for tiny CPU training runs (drawn videos or given ones).

`python -m stllm toy-data OUT [--videos DIR] [--num N]` writes OUT/anno/toy.json and, for drawn videos,
OUT/videos/*.mp4: a coloured square moving left or right ("Which way does the square move?"). With
`--videos DIR`, every video of DIR gets a few questions answered by its file name (enough to memorise).
Then: `python -m stllm train configs/train/tiny.yaml data.data_root=OUT`.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

from stllm.quickstart.drawing import draw_direction, write_mp4

ANNOTATION = "anno/toy.json"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")


def write_drawn_dataset(root: str | Path, num: int = 16, seed: int = 0) -> Path:
    """root -> root/videos/NNN.mp4 + root/anno/toy.json (media paths relative to root); returns the JSON path."""
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    items = []
    for i in range(num):
        clip = draw_direction(rng, 12, 64)  # the quickstart's drawer: a square moving left or right
        rel = f"videos/{i:03d}.mp4"
        write_mp4(clip.frames, root / rel)
        items.append(
            {
                "video": rel,
                "QA": [{"i": "", "q": "Which way does the square move?", "a": f"The square moves {clip.answer}."}],
            }
        )
    return _write_annotation(root, items)


def write_video_dataset(root: str | Path, videos: str | Path) -> Path:
    """Existing videos -> root/anno/toy.json whose answers name each video (media paths absolute)."""
    files = sorted(p for p in Path(videos).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos}")
    questions = ["What is this video about?", "Describe the video.", "What is shown?"]
    items = [
        {
            "video": str(p.resolve()),
            "QA": [{"i": "", "q": q, "a": f"This video shows {p.stem.lower()}."} for q in questions],
        }
        for p in files
    ]
    return _write_annotation(Path(root), items)


def _write_annotation(root: Path, items: list[dict]) -> Path:
    path = root / ANNOTATION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, indent=1))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm toy-data", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("out", help="dataset root (pass it as data.data_root)")
    parser.add_argument("--videos", help="use the videos of this folder instead of drawn ones")
    parser.add_argument("--num", type=int, default=16, help="number of drawn videos")
    args = parser.parse_args(argv)
    path = write_video_dataset(args.out, args.videos) if args.videos else write_drawn_dataset(args.out, args.num)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
