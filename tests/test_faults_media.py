"""Videos that are cut short or are not files -> MediaError "truncated" / "not a regular file", never a shorter
video (docs/reliability.md, Videos and media): read_clip on every backend and the chat command end to end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from stllm.cli import main as cli_main
from stllm.data.sampling import FrameSampling
from stllm.data.video import HAVE_DECORD, MediaError, read_clip
from tests.data_media import frame_image, write_video
from tests.faults import Run, assert_user_error

BACKENDS = ["auto", "pyav", pytest.param("decord", marks=pytest.mark.skipif(not HAVE_DECORD, reason="no decord"))]
SAMPLING = FrameSampling(num_frames=8, mode="uniform_middle")


def write_faststart(path: Path, n: int = 240, fps: int = 10) -> Path:
    """An H.264 mp4 whose index (moov) is at the front, as web videos are: a cut copy still opens."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_image(i % 256), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def cut(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cut_videos")
    full = write_faststart(root / "faststart.mp4")
    out = {f"faststart_{p}": _cut(full, root / f"faststart_{p}.mp4", p / 100) for p in (50, 90)}
    for ext, codec in ((".mkv", "libx264"), (".avi", "mpeg4")):  # no MP4 boxes: checked by frame count / duration
        whole = Path(write_video(root / f"whole{ext}", n=60, codec=codec))
        out[f"cut{ext}"] = _cut(whole, root / f"cut{ext}", 0.5)
    out["whole"] = full
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["faststart_50", "faststart_90", "cut.mkv", "cut.avi"])
def test_truncated_video_is_refused_not_read_short(cut, case, backend):
    with pytest.raises(MediaError, match="truncated file") as info:
        read_clip(cut[case], SAMPLING, backend=backend)
    assert info.value.path == str(cut[case])


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_faststart_video_reads_every_frame(cut, backend):
    clip = read_clip(cut["whole"], SAMPLING, backend=backend)
    assert clip.total_frames == 240 and clip.frames.shape[0] == 8


def _read_in_thread(path: str) -> BaseException | None:
    """read_clip in a thread with a deadline: a FIFO must be refused at once, never block the test."""
    result: list[BaseException | None] = []

    def work() -> None:
        try:
            read_clip(path, SAMPLING)
            result.append(None)
        except MediaError as err:
            result.append(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(20)
    assert result, f"read_clip({path}) blocked"
    return result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_and_device_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        err = _read_in_thread(path)
        assert isinstance(err, MediaError) and "not a regular file" in str(err) and path in str(err)


def test_chat_on_a_truncated_video_is_one_line_rc_2(tiny_model_dir, cut, capsys):
    rc = cli_main(["chat", "--model", str(tiny_model_dir), "--video", str(cut["faststart_50"]), "--question", "hi"])
    captured = capsys.readouterr()
    run = Run(rc, captured.out, captured.err)
    assert_user_error(run, "cannot read the video", str(cut["faststart_50"]), "truncated file", "50% of the data")
    assert captured.out == ""  # no answer from half a video
