"""Video files decoded once and kept in memory: every frame, up to a byte budget (least recently used out first).

For small datasets seen many times (the quickstart reads each of its 1000 clips 16 times per variant), decoding
is a fixed cost paid again on every visit. The cache decodes a file's every frame on first use and afterwards
only samples indices, the same way read_clip does (same reader, same frame count and fps, the same draws from
the same rng), so a cached read returns exactly the frames an uncached one decodes: decoding a frame does not
depend on which other frames are decoded with it.

Only video files go through it (decord / PyAV); images, GIFs and frame folders are read as usual. A file whose
full decode fails (a truncated tail, say) is read uncached from then on, so the cache never turns a sample that
read_clip can read into bad media. With DataLoader workers each worker holds its own cache.
"""

from __future__ import annotations

import collections
import logging
import os

from stllm.data.sampling import FrameSampling, Rng, frame_indices
from stllm.data.types import VideoClip
from stllm.data.video import MediaError, detect_backend, read_clip

logger = logging.getLogger(__name__)

EVERY_FRAME = FrameSampling(num_frames=0, mode="all")


class DecodedVideoCache:
    """path -> all its decoded frames, least recently used evicted beyond `max_mb` megabytes (10^6 bytes)."""

    def __init__(self, max_mb: float):
        if max_mb <= 0:
            raise ValueError(f"max_mb must be > 0, got {max_mb}")
        self.max_bytes = int(max_mb * 1e6)
        self.bytes = 0
        self.hits = self.misses = 0
        self._clips: collections.OrderedDict[tuple[str, str], VideoClip] = collections.OrderedDict()
        self._uncacheable: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._clips)

    def read(
        self,
        path: str | os.PathLike,
        sampling: FrameSampling,
        *,
        rng: Rng = None,
        backend: str = "auto",
        num_threads: int = 1,
        **kwargs,
    ) -> VideoClip:
        """read_clip(path, sampling, rng=rng, backend=backend, ...) with the decoding done once per file.

        Windows (sampling.start/end) and keyword arguments for frame folders pass through to read_clip.
        """
        path = str(path)
        resolved = detect_backend(path) if backend == "auto" else backend
        key = (os.path.abspath(path), backend)
        if resolved not in ("decord", "pyav") or key in self._uncacheable:
            return read_clip(path, sampling, rng=rng, backend=backend, num_threads=num_threads, **kwargs)
        whole = self._clips.get(key)
        if whole is None:
            self.misses += 1
            try:
                whole = read_clip(path, EVERY_FRAME, backend=backend, num_threads=num_threads)
            except MediaError as err:  # bad media raises again here; a file that reads in part is kept uncached
                clip = read_clip(path, sampling, rng=rng, backend=backend, num_threads=num_threads, **kwargs)
                logger.debug("%s: full decode failed (%s); reading it uncached", path, err.problem)
                self._uncacheable.add(key)
                return clip
            self._put(key, whole)
        else:
            self.hits += 1
            self._clips.move_to_end(key)
        indices = frame_indices(sampling, whole.total_frames, whole.fps, rng)
        return VideoClip(
            whole.frames[indices], indices, whole.fps, whole.total_frames, whole.duration, path, whole.media_type
        )  # frames: a fresh (T, H, W, 3) uint8 array (fancy indexing copies)

    def _put(self, key: tuple[str, str], clip: VideoClip) -> None:
        size = clip.frames.nbytes
        if size > self.max_bytes:
            return  # larger than the whole budget: served from this decode, not kept
        while self.bytes + size > self.max_bytes and self._clips:
            _, old = self._clips.popitem(last=False)
            self.bytes -= old.frames.nbytes
        self._clips[key] = clip
        self.bytes += size
