"""A media path + FrameSampling -> VideoClip (uint8 (T,H,W,3) RGB frames, fps, frame count, indices used).

One seam for every media kind (docs/design.md decision 6): video files via decord (PyAV when decord is missing or when
asked), GIFs via Pillow, folders of numbered frames (jpg/png; MVBench's 1-based ``%05d.jpg``), single images.
Only the sampled frames are decoded. Any unreadable input raises MediaError naming the file and the problem.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from stllm.data.sampling import FrameSampling, Rng, fps_or_default, frame_indices
from stllm.data.types import VideoClip
from stllm.errors import StllmError

logger = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp", ".wmv"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
BACKENDS = ("auto", "decord", "pyav", "gif", "frames", "image")
GIF_DEFAULT_FPS = 25.0  # docs/original.md §4.4: the original gif reader reported 25 fps

try:  # docs/design.md decision 9: decord is optional; PyAV is the fallback with the same result
    import decord

    # decord's bundled FFmpeg prints its own errors ("moov atom not found", "Invalid NAL unit size") straight to
    # stderr; every failure reaches the user as one MediaError line instead, so keep FFmpeg quiet (PyAV already is)
    decord.logging.set_level(decord.logging.QUIET)
    HAVE_DECORD = True
except ImportError:  # pragma: no cover - depends on the install
    decord = None
    HAVE_DECORD = False


class MediaError(StllmError, ValueError):
    """A media file that cannot be read (missing, empty, corrupt, no frames, gaps in a frame folder)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def detect_backend(path: str | os.PathLike) -> str:
    """Which reader a path needs: 'frames' (folder), 'gif', 'image', else the video decoder available."""
    p = Path(path)
    if p.is_dir():
        return "frames"
    ext = p.suffix.lower()
    if ext == ".gif":
        return "gif"
    if ext in IMAGE_EXTS:
        return "image"
    return "decord" if HAVE_DECORD else "pyav"


def read_clip(
    path: str | os.PathLike,
    sampling: FrameSampling,
    *,
    rng: Rng = None,
    backend: str = "auto",
    folder_fps: float = 3.0,
    max_source_frames: int | None = None,
    num_threads: int = 1,
) -> VideoClip:
    """Decode the frames `sampling` selects from `path`.

    backend: 'auto' (by path), 'decord', 'pyav', 'gif', 'frames', 'image'. folder_fps: frame rate of a frame
    folder (MVBench tvqa: 3; the original training rawframe reader: 5). max_source_frames: only the first N
    frames of a frame folder count (the per-item ``num_frames`` of docs/original.md §4.2, applied per sample: Q17 fix).
    Returns VideoClip with frames uint8 (T, H, W, 3), T == len(indices).
    """
    path = str(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # a FIFO or a device would block the decoder forever (or stream without end)
        raise MediaError(path, "not a regular file (a FIFO, device or socket); give a video file or a frame folder")
    auto = backend == "auto"
    if auto:
        backend = detect_backend(path)
    if stat.S_ISREG(mode) and os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    if backend in ("decord", "pyav"):
        _check_mp4_boxes(path)
    if backend == "decord" and not HAVE_DECORD:
        raise MediaError(path, "decord is not installed (use backend='pyav')")
    if backend == "frames":
        clip = _read_frames(path, sampling, rng, folder_fps, max_source_frames)
    elif backend == "decord":
        try:
            clip = _read_decord(path, sampling, rng, num_threads)
        except MediaError as err:
            if not auto:
                raise
            # decord fails on some valid files (e.g. H.264 at 48x48: "size must exactly match"); PyAV decides
            logger.debug("decord failed on %s (%s); trying PyAV", path, err.problem)
            clip = _read_pyav(path, sampling, rng, num_threads)
    elif backend == "pyav":
        clip = _read_pyav(path, sampling, rng, num_threads)
    elif backend == "gif":
        clip = _read_gif(path, sampling, rng)
    else:
        clip = _read_image(path, sampling, rng)
    if clip.frames.ndim != 4 or clip.frames.shape[0] == 0 or clip.frames.shape[-1] != 3:
        raise MediaError(path, f"decoder returned frames of shape {clip.frames.shape}")
    return clip


def _check_mp4_boxes(path: str) -> None:
    """MP4/MOV family (first box "ftyp"): the top-level boxes must fit in the file. A copy cut short (an interrupted
    download) with its index at the front ("faststart") still opens, and decoders then read it as a shorter video:
    refuse it instead. Other containers are checked by frame count in _read_pyav."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            box_size, kind = struct.unpack(">I4s", f.read(8))
            if box_size == 1:  # 64-bit size follows the type
                (box_size,) = struct.unpack(">Q", f.read(8))
            elif box_size == 0:  # the box runs to the end of the file
                return
            if box_size < 8:
                raise MediaError(path, f"corrupt MP4: box {kind!r} at byte {offset} declares {box_size} bytes")
            if offset + box_size > size:
                name = kind.decode("latin-1")
                raise MediaError(
                    path,
                    f"truncated file: its '{name}' box ends at byte {offset + box_size:,} but the file has {size:,} "
                    f"bytes ({100 * size / (offset + box_size):.0f}% of the data); download or copy it again",
                )
            offset += box_size


def _sample(path: str, sampling: FrameSampling, total: int, fps: float, rng: Rng, first_idx: int = 0) -> list[int]:
    if total <= 0:
        raise MediaError(path, "no frames")
    return frame_indices(sampling, total, fps, rng, first_idx=first_idx)


def _read_decord(path: str, sampling: FrameSampling, rng: Rng, num_threads: int = 1) -> VideoClip:
    if decord is None:  # read_clip checks HAVE_DECORD before choosing this reader
        raise RuntimeError("the decord backend was chosen but decord is not installed")
    try:
        vr = decord.VideoReader(path, num_threads=num_threads)
        total = len(vr)
        fps = fps_or_default(float(vr.get_avg_fps()), 30.0)
    except Exception as err:  # decord raises a bare RuntimeError / DECORDError for every open failure
        raise MediaError(path, f"cannot open video with decord ({type(err).__name__}: {_short(err)})") from err
    if total > 0:
        covered = float(vr.get_frame_timestamp(total - 1)[1])  # end time of the last frame, seconds
        _check_complete(path, _declared_by_header(path), total, covered, fps)
    indices = _sample(path, sampling, total, fps, rng)
    try:
        frames = vr.get_batch(indices).asnumpy()  # (T, H, W, 3) uint8
    except Exception as err:
        raise MediaError(path, f"cannot decode frames {indices[:4]}... ({type(err).__name__}: {_short(err)})") from err
    return VideoClip(frames, indices, fps, total, total / fps, path, "video")


def _pyav_index(container, stream) -> tuple[list[int], list[bool]]:
    """Demux (no decoding) -> presentation timestamps in display order and key-frame flags, as decord indexes."""
    entries = []
    for packet in container.demux(stream):
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.size == 0:  # flush packet
            continue
        entries.append((ts, bool(packet.is_keyframe)))
    entries.sort()
    return [ts for ts, _ in entries], [key for _, key in entries]


def _read_pyav(path: str, sampling: FrameSampling, rng: Rng, num_threads: int = 1) -> VideoClip:
    import av

    try:
        container = av.open(path)
    except Exception as err:
        raise MediaError(path, f"cannot open video with PyAV ({type(err).__name__}: {_short(err)})") from err
    with container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if num_threads != 1 else "SLICE"
        try:
            pts, keys = _pyav_index(container, stream)
        except Exception as err:
            raise MediaError(path, f"cannot demux ({type(err).__name__}: {_short(err)})") from err
        rate = stream.average_rate or stream.guessed_rate
        fps = fps_or_default(float(rate) if rate else None, 30.0)
        total = len(pts)
        if pts and stream.time_base:
            covered = (pts[-1] - (stream.start_time or 0)) * float(stream.time_base) + 1.0 / fps
            _check_complete(path, _declared(container, stream), len(pts), covered, fps)
        indices = _sample(path, sampling, total, fps, rng)
        wanted = sorted(set(indices))
        wanted_set = set(wanted)
        key_positions = [i for i, k in enumerate(keys) if k] or [0]
        decoded: dict[int, np.ndarray] = {}
        pos_of_pts = {ts: i for i, ts in enumerate(pts)}
        cursor = -1  # display position of the last frame decoded in the current forward run
        frames_iter = None
        try:
            for target in wanted:
                if target in decoded:
                    continue
                # seek only when a key frame lies between the cursor and the target; else decode forward
                key = max((k for k in key_positions if k <= target), default=0)
                if frames_iter is None or key > cursor or target <= cursor:
                    container.seek(pts[key], stream=stream, backward=True, any_frame=False)
                    frames_iter = container.decode(stream)
                    cursor = -1
                for frame in frames_iter:
                    ts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
                    pos = pos_of_pts.get(ts) if ts is not None else None
                    if pos is None:
                        continue
                    cursor = pos
                    if pos in wanted_set and pos not in decoded:
                        decoded[pos] = frame.to_ndarray(format="rgb24")
                    if pos >= target:
                        break
        except Exception as err:
            raise MediaError(path, f"cannot decode ({type(err).__name__}: {_short(err)})") from err
    missing = [i for i in wanted if i not in decoded]
    if missing:
        raise MediaError(path, f"frames {missing[:4]} could not be decoded (truncated or corrupt stream?)")
    frames = np.stack([decoded[i] for i in indices])  # (T, H, W, 3) uint8
    return VideoClip(frames, indices, fps, total, total / fps, path, "video")


def _declared(container, stream) -> tuple[int, float | None]:
    """What a container's header says the video stream holds: (frame count or 0, seconds or None)."""
    frames = int(stream.frames or 0)
    if stream.duration and stream.time_base:
        return frames, float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:  # Matroska/WebM: only the segment's duration
        return frames, container.duration / 1e6  # AV_TIME_BASE units
    return frames, None


def _check_complete(path: str, declared: tuple[int, float | None], n_read: int, covered: float, fps: float) -> None:
    """Frames a decoder can read vs what the container declares (frame count, else duration): fewer means the file
    was cut short, and sampling it would answer from part of the video. covered: seconds up to the last frame's end."""
    frames, seconds = declared
    if frames > 0:
        if n_read < frames:
            problem = f"truncated file: the container declares {frames} frames but only {n_read} can be read"
            raise MediaError(path, problem)
        return
    # tolerance: two frames or 5%, whichever is larger (containers round durations; streams may start late)
    if seconds is not None and covered < seconds - max(2.0 / fps, 0.05 * seconds):
        problem = f"truncated file: the stream declares {seconds:.2f} s but its frames end at {covered:.2f} s"
        raise MediaError(path, problem)


def _declared_by_header(path: str) -> tuple[int, float | None]:
    """The container header's frame count and duration, read with PyAV without demuxing ((0, None) if unreadable:
    decord then decides alone)."""
    import av
    from av.error import FFmpegError

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return 0, None
            return _declared(container, container.streams.video[0])
    except (FFmpegError, OSError, ValueError):
        return 0, None


def _read_gif(path: str, sampling: FrameSampling, rng: Rng) -> VideoClip:
    try:
        with Image.open(path) as img:
            total = getattr(img, "n_frames", 1)
            duration_ms = img.info.get("duration") or 0
            fps = 1000.0 / duration_ms if duration_ms > 0 else GIF_DEFAULT_FPS
            indices = _sample(path, sampling, total, fps, rng)
            wanted, last, decoded = set(indices), max(indices), {}
            # GIF frames are deltas on the previous frame: decode forward, stop after the last needed one
            for pos, frame in enumerate(ImageSequence.Iterator(img)):
                if pos in wanted:
                    decoded[pos] = np.array(frame.convert("RGB"))
                if pos >= last:
                    break
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(path, f"cannot read GIF ({type(err).__name__}: {_short(err)})") from err
    if len(decoded) != len(set(indices)):
        raise MediaError(path, "GIF ended before the sampled frames")
    return VideoClip(np.stack([decoded[i] for i in indices]), indices, fps, total, total / fps, path, "gif")


_NUMBER = re.compile(r"(\d+)(?=\.[^.]+$)")


def list_frame_folder(path: str) -> tuple[list[str], int]:
    """A folder of numbered frames -> (file names sorted by number, first number); gaps are a MediaError."""
    numbered = []
    for name in os.listdir(path):
        if Path(name).suffix.lower() not in IMAGE_EXTS:
            continue
        match = _NUMBER.search(name)
        if match is None:
            raise MediaError(path, f"frame file {name!r} has no frame number")
        numbered.append((int(match.group(1)), name))
    if not numbered:
        raise MediaError(path, "frame folder has no jpg/png frames")
    numbered.sort()
    numbers = [n for n, _ in numbered]
    first = numbers[0]
    expected = list(range(first, first + len(numbers)))
    if numbers != expected:
        gaps = sorted(set(range(first, numbers[-1] + 1)) - set(numbers))
        dups = len(numbers) - len(set(numbers))
        what = f"missing frame numbers {gaps[:5]}" if gaps else f"{dups} duplicate frame numbers"
        raise MediaError(path, f"frame folder has gaps: {what}")
    return [name for _, name in numbered], first


def _read_frames(path: str, sampling: FrameSampling, rng: Rng, fps: float, max_source_frames: int | None) -> VideoClip:
    names, first = list_frame_folder(path)
    if max_source_frames:
        names = names[:max_source_frames]
    total = len(names)
    indices = _sample(path, sampling, total, fps, rng, first_idx=first)
    frames = []
    cache: dict[int, np.ndarray] = {}
    for i in indices:
        if i not in cache:
            cache[i] = _load_image(os.path.join(path, names[i]))
        frames.append(cache[i])
    if len({f.shape for f in frames}) > 1:
        raise MediaError(path, "frames of different sizes in one folder")
    return VideoClip(np.stack(frames), indices, fps, total, total / fps, path, "frames")


def _load_image(path: str) -> np.ndarray:
    if not os.path.isfile(path):  # a FIFO or device named like a frame would block
        raise MediaError(path, "not a regular file")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # (H, W, 3) uint8, writable
    except Exception as err:
        raise MediaError(path, f"cannot read image ({type(err).__name__}: {_short(err)})") from err


def _read_image(path: str, sampling: FrameSampling, rng: Rng) -> VideoClip:
    """A single image is a one-frame clip (docs/original.md §4.3: images load as (1, 3, H, W)); sampling is ignored."""
    return VideoClip(_load_image(path)[None], [0], 1.0, 1, 1.0, path, "image")


def _short(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text[:limit] + ("..." if len(text) > limit else "")
