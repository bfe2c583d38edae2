"""read_clip: decord vs PyAV on real and self-drawn videos, GIFs, frame folders, images, and every bad input."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

from stllm.data import video as video_mod
from stllm.data.sampling import FrameSampling
from stllm.data.video import MediaError, read_clip
from tests.data_media import decode_index, write_frame_folder, write_gif, write_image, write_video

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
needs_decord = pytest.mark.skipif(not video_mod.HAVE_DECORD, reason="decord is not installed")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "mp4": write_video(root / "v.mp4", n=40, fps=10),
        "webm": write_video(root / "v.webm", n=30, fps=10, codec="libvpx"),
        "avi": write_video(root / "v.avi", n=30, fps=10, codec="mpeg4"),
        "mkv": write_video(root / "v.mkv", n=30, fps=10),
        "gif": write_gif(root / "g.gif", n=12, duration_ms=100),
        "frames": write_frame_folder(root / "tvqa_clip", n=20, first=1),
        "image": write_image(root / "img.png"),
        "root": root,
    }


@needs_decord
@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"shared videos folder absent ({SHARED_VIDEOS})")
@pytest.mark.parametrize("name", ["TVshow.mp4", "driving.mp4"])
def test_real_videos_decord_equals_pyav(name):
    path = SHARED_VIDEOS / name
    sampling = FrameSampling(num_frames=8, mode="uniform_middle")
    a = read_clip(path, sampling, backend="decord")
    b = read_clip(path, sampling, backend="pyav")
    assert a.indices == b.indices and a.total_frames == b.total_frames
    assert a.frames.dtype == np.uint8 and a.frames.shape == b.frames.shape
    assert np.array_equal(a.frames, b.frames)
    assert abs(a.fps - b.fps) < 1e-3


@pytest.mark.parametrize("ext", ["mp4", "webm", "avi", "mkv"])
@pytest.mark.parametrize("backend", [pytest.param("decord", marks=needs_decord), "pyav"])
def test_sampled_frames_are_the_right_ones(media, ext, backend):
    clip = read_clip(media[ext], FrameSampling(num_frames=6, mode="rand"), rng=random.Random(3), backend=backend)
    assert clip.frames.shape == (6, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert [decode_index(f) for f in clip.frames] == clip.indices
    assert clip.fps == pytest.approx(10.0) and clip.duration == pytest.approx(clip.total_frames / 10.0)


@needs_decord
def test_decord_and_pyav_identical_on_drawn_video(media):
    sampling = FrameSampling(num_frames=40, mode="middle")  # every frame, out of key-frame order too
    a = read_clip(media["mp4"], sampling, backend="decord")
    b = read_clip(media["mp4"], sampling, backend="pyav")
    assert a.total_frames == b.total_frames == 40 and np.array_equal(a.frames, b.frames)


def test_pyav_repeated_and_padded_indices(media):
    clip = read_clip(media["avi"], FrameSampling(num_frames=50, mode="middle"), backend="pyav")
    assert len(clip.indices) == 50 and clip.indices[-1] == clip.indices[-2] == 29
    assert [decode_index(f) for f in clip.frames] == clip.indices


def test_gif(media):
    clip = read_clip(media["gif"], FrameSampling(num_frames=4, mode="middle"))
    assert clip.media_type == "gif" and clip.total_frames == 12 and clip.fps == pytest.approx(10.0)
    assert [decode_index(f) for f in clip.frames] == clip.indices == [1, 4, 7, 10]


def test_frame_folder_one_based_mvbench(media):
    clip = read_clip(media["frames"], FrameSampling(num_frames=0, mode="mvbench"), folder_fps=3.0)
    assert clip.media_type == "frames" and clip.total_frames == 20 and clip.fps == 3.0
    assert clip.indices == [1, 4, 7, 11, 14, 17]  # docs/original.md §7.2 on a 1-based %05d.jpg folder
    assert [decode_index(f) for f in clip.frames] == clip.indices  # position i holds file number i+1


def test_frame_folder_numeric_sort_and_source_limit(tmp_path):
    folder = write_frame_folder(tmp_path / "f", n=12, first=0, pattern="img_{}.png")  # img_10 after img_9
    clip = read_clip(folder, FrameSampling(num_frames=12, mode="middle"))
    assert [decode_index(f) for f in clip.frames] == list(range(12))
    clip = read_clip(folder, FrameSampling(num_frames=4, mode="middle"), max_source_frames=8)
    assert clip.total_frames == 8 and max(clip.indices) < 8


def test_image_is_one_frame(media):
    clip = read_clip(media["image"], FrameSampling(num_frames=16))
    assert clip.frames.shape == (1, 30, 50, 3) and clip.media_type == "image" and clip.indices == [0]


def _truncated(path, root):
    data = Path(path).read_bytes()
    out = root / "truncated.mp4"
    out.write_bytes(data[: len(data) // 2])
    return out


def _truncated_faststart(root: Path) -> Path:
    """A download cut in half whose index (moov) sits at the front: opens, but the frames are gone."""
    import av

    from tests.data_media import frame_image

    full = root / "faststart.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = full.read_bytes()
    return _file(root, "faststart_cut.mp4", data[: len(data) // 2])


def _file(root: Path, name: str, data: bytes) -> Path:
    (root / name).write_bytes(data)
    return root / name


BAD_CASES = {
    "missing": (lambda m: m["root"] / "nope.mp4", "file not found"),
    "empty": (lambda m: _file(m["root"], "empty.mp4", b""), "empty file"),
    "text": (lambda m: _file(m["root"], "text.mp4", b"not a video\n"), "cannot open"),
    "truncated": (lambda m: _truncated(m["mp4"], m["root"]), "truncated file"),
    "truncated_faststart": (lambda m: _truncated_faststart(m["root"]), "truncated file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("backend", [pytest.param("decord", marks=needs_decord), "pyav", "auto"])
def test_bad_videos_raise_media_error_naming_the_file(media, case, backend):
    make, problem = BAD_CASES[case]
    path = make(media)
    with pytest.raises(MediaError, match=problem) as info:
        read_clip(path, FrameSampling(num_frames=4), backend=backend)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_zero_frame_gif_and_corrupt_gif(tmp_path):
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")  # header only, no image
    with pytest.raises(MediaError, match="bad.gif"):
        read_clip(bad, FrameSampling(num_frames=4))


def test_frame_folder_with_gap(tmp_path):
    folder = write_frame_folder(tmp_path / "gappy", n=10, first=1, skip=(4, 5))
    with pytest.raises(MediaError, match=r"gappy.*gaps: missing frame numbers \[4, 5\]"):
        read_clip(folder, FrameSampling(num_frames=4))


def test_empty_frame_folder(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MediaError, match="empty_dir.*no jpg/png"):
        read_clip(tmp_path / "empty_dir", FrameSampling(num_frames=4))


def test_unknown_backend(media):
    with pytest.raises(ValueError, match="unknown video backend"):
        read_clip(media["mp4"], FrameSampling(num_frames=4), backend="opencv")


def test_pyav_fallback_when_decord_missing(media, monkeypatch, caplog):
    monkeypatch.setattr(video_mod, "HAVE_DECORD", False)
    assert video_mod.detect_backend(media["mp4"]) == "pyav"
    clip = read_clip(media["mp4"], FrameSampling(num_frames=3, mode="middle"))
    assert [decode_index(f) for f in clip.frames] == clip.indices
    with pytest.raises(MediaError, match="decord is not installed"):
        read_clip(media["mp4"], FrameSampling(num_frames=3), backend="decord")
    logging.getLogger(__name__).debug("fallback ok")


def test_auto_backend_falls_back_to_pyav_where_decord_fails(tmp_path):
    """decord 0.6 cannot copy out 48x48 H.264 frames ("size must exactly match"); auto mode reads them with PyAV."""
    import numpy as np

    from stllm.quickstart.drawing import write_mp4

    path = tmp_path / "small.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)
    write_mp4(frames, path)
    clip = read_clip(path, FrameSampling(num_frames=4, mode="middle"))
    assert clip.frames.shape == (4, 48, 48, 3) and clip.indices == [0, 2, 4, 6]
