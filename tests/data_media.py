"""Test media drawn by the tests themselves: videos, GIFs, frame folders whose frames encode their own index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def frame_image(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """(H,W,3) uint8 flat colour encoding i < 256: R = 16*(i%16)+8, G = 16*(i//16)+8 (robust to codec error)."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 16 * (i % 16) + 8
    img[..., 1] = 16 * (i // 16) + 8
    img[..., 2] = 128
    return img


def decode_index(frame: np.ndarray) -> int:
    """The index frame_image encoded, read from the centre pixel of a decoded (H,W,3) frame."""
    r, g = (int(v) for v in frame[frame.shape[0] // 2, frame.shape[1] // 2, :2])
    return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))


def write_video(
    path: str | os.PathLike, n: int = 40, fps: int = 10, codec: str = "libx264", height: int = 48, width: int = 64
) -> str:
    """An n-frame video (mp4/webm/avi/mkv by extension) whose frame i shows frame_image(i)."""
    import av

    if codec.startswith("libvpx") and "decord" in sys.modules:
        # decord's bundled FFmpeg breaks PyAV's libvpx encoder once decord is imported (avcodec_open2 returns
        # EINVAL), so draw VP8/VP9 videos in a fresh interpreter
        args = f"{str(path)!r}, n={n}, fps={fps}, codec={codec!r}, height={height}, width={width}"
        code = f"from tests.data_media import write_video; write_video({args})"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
        return str(path)

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frame_image(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def write_gif(path: str | os.PathLike, n: int = 12, duration_ms: int = 100) -> str:
    frames = [Image.fromarray(frame_image(i)) for i in range(n)]
    frames[0].save(str(path), save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return str(path)


def write_frame_folder(
    folder: str | os.PathLike, n: int = 20, first: int = 1, pattern: str = "{:05d}.jpg", skip: tuple[int, ...] = ()
) -> str:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if first + i not in skip:
            Image.fromarray(frame_image(i)).save(folder / pattern.format(first + i), quality=95)
    return str(folder)


def write_image(path: str | os.PathLike, height: int = 30, width: int = 50) -> str:
    Image.fromarray(frame_image(5, height, width)).save(str(path))
    return str(path)


def write_it_dataset(root: Path, name: str, items: list[dict]) -> str:
    """A VideoChat2-IT annotation JSON under root/anno/<name>.json; returns its path relative to root/anno."""
    anno = root / "anno" / f"{name}.json"
    anno.parent.mkdir(parents=True, exist_ok=True)
    anno.write_text(json.dumps(items))
    return f"{name}.json"
