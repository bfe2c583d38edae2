"""DecodedVideoCache: cached reads return exactly the frames read_clip decodes; LRU budget; fallbacks; dataset use."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import stllm.data.frame_cache as frame_cache
from stllm.data.config import DatasetSpec
from stllm.data.datasets import InstructionDataset
from stllm.data.frame_cache import DecodedVideoCache
from stllm.data.sampling import FrameSampling, frame_indices
from stllm.data.video import HAVE_DECORD, MediaError, read_clip
from tests.data_media import decode_index, write_gif, write_it_dataset, write_video

BACKENDS = ["pyav", "auto"] + (["decord"] if HAVE_DECORD else [])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return root, [write_video(root / f"v{k}.mp4", n=20 + 7 * k, fps=10) for k in range(3)]


def test_all_mode_is_every_frame_of_the_window():
    assert frame_indices(FrameSampling(num_frames=0, mode="all"), 12, 10.0) == list(range(12))
    assert frame_indices(FrameSampling(mode="all", start=0.5, end=1.0), 30, 10.0) == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_reads_equal_uncached_reads(videos, backend):
    _, paths = videos
    cache = DecodedVideoCache(max_mb=100)
    samplings = [
        FrameSampling(num_frames=8, mode="rand"),
        FrameSampling(num_frames=5, mode="middle"),
        FrameSampling(num_frames=4, mode="rand", start=0.4, end=1.5),
        FrameSampling(num_frames=40),
    ]
    for round_ in range(2):  # the first round fills the cache, the second is served from it
        for k, path in enumerate(paths):
            for j, sampling in enumerate(samplings):
                seed = 100 * round_ + 10 * k + j
                plain = read_clip(path, sampling, rng=random.Random(seed), backend=backend)
                cached = cache.read(path, sampling, rng=random.Random(seed), backend=backend)
                assert cached.indices == plain.indices
                assert np.array_equal(cached.frames, plain.frames)
                assert (cached.fps, cached.total_frames, cached.duration, cached.path) == (
                    plain.fps,
                    plain.total_frames,
                    plain.duration,
                    plain.path,
                )
                assert [decode_index(f) for f in cached.frames] == cached.indices
    assert (cache.misses, len(cache)) == (3, 3) and cache.hits == 2 * 3 * 4 - 3


def test_budget_evicts_least_recently_used(videos):
    _, paths = videos
    one = read_clip(paths[0], FrameSampling(num_frames=0, mode="all"), backend="pyav").frames.nbytes  # 20 frames
    cache = DecodedVideoCache(max_mb=(one * 2.9) / 1e6)  # v0 (20 frames) + v1 (27) fit, v2 (34) does not join them
    sampling = FrameSampling(num_frames=4, mode="middle")
    cache.read(paths[0], sampling, backend="pyav")
    cache.read(paths[1], sampling, backend="pyav")
    assert len(cache) == 2
    cache.read(paths[0], sampling, backend="pyav")  # v0 is now the most recently used
    cache.read(paths[2], sampling, backend="pyav")  # evicts v1
    keys = [path for path, _ in cache._clips]
    assert keys[-1].endswith("v2.mp4") and not any(k.endswith("v1.mp4") for k in keys)
    assert cache.bytes <= cache.max_bytes and cache.bytes == sum(c.frames.nbytes for c in cache._clips.values())
    tiny = DecodedVideoCache(max_mb=one / 2e6)  # nothing fits: every read decodes, nothing is kept
    clip = tiny.read(paths[0], sampling, backend="pyav")
    assert len(tiny) == 0 and clip.frames.shape[0] == 4


def test_bad_files_and_other_media_go_through_read_clip(videos, monkeypatch):
    root, paths = videos
    cache = DecodedVideoCache(max_mb=10)
    (root / "text.mp4").write_bytes(b"not a video\n")
    with pytest.raises(MediaError, match="cannot open") as info:
        cache.read(root / "text.mp4", FrameSampling(num_frames=4))
    assert info.value.path == str(root / "text.mp4")
    with pytest.raises(MediaError, match="file not found"):
        cache.read(root / "nope.mp4", FrameSampling(num_frames=4))
    gif = write_gif(root / "a.gif")
    assert (
        cache.read(gif, FrameSampling(num_frames=3, mode="middle")).indices
        == read_clip(gif, FrameSampling(num_frames=3, mode="middle")).indices
    )
    assert len(cache) == 0  # GIFs are not cached

    # a file whose full decode fails (a corrupt tail, say) is read uncached, now and later
    real_read = frame_cache.read_clip

    def tail_corrupt(path, sampling, **kw):
        if sampling.mode == "all":
            raise MediaError(path, "cannot decode frames [26]...")
        return real_read(path, sampling, **kw)

    monkeypatch.setattr(frame_cache, "read_clip", tail_corrupt)
    sampling = FrameSampling(num_frames=4, mode="middle")
    for _ in range(2):
        clip = cache.read(paths[1], sampling, backend="pyav")
        assert np.array_equal(clip.frames, real_read(paths[1], sampling, backend="pyav").frames)
    assert len(cache) == 0 and len(cache._uncacheable) == 1


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_mb"):
        DecodedVideoCache(0)


def test_dataset_with_cache_gives_the_same_samples(tmp_path):
    (tmp_path / "vids").mkdir()
    qa = [{"i": "", "q": "q", "a": "a"}]
    for k in range(2):
        write_video(tmp_path / "vids" / f"v{k}.mp4", n=24, fps=10)
    write_it_dataset(
        tmp_path,
        "vid",
        [
            {"video": "v0.mp4", "QA": qa},
            {"video": "v1.mp4", "QA": qa},
            {"video": "v0.mp4", "QA": qa, "start": 0.5, "end": 1.8},
        ],
    )
    spec = DatasetSpec(name="vid", annotation="vid.json", media_root="vids", media_type="video", num_frames=6)
    plain = InstructionDataset(spec, str(tmp_path), anno_root="anno", image_size=32)
    cached = InstructionDataset(spec, str(tmp_path), anno_root="anno", image_size=32, cache_decoded_mb=50)
    assert plain.cache is None and cached.cache is not None
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], cached[i]
            assert a.frame_indices == b.frame_indices and torch.equal(a.pixel_values, b.pixel_values)
    assert len(cached.cache) == 2 and cached.cache.hits == 3 * 3 - 2
