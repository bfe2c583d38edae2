"""demo.py: one-shot and interactive (subprocess with piped stdin), commands, one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stllm.demo import terminal as demo
from tests.data_media import write_video
from tests.helpers import VIDEOS, need

REPO = Path(__file__).resolve().parents[1]
FAST = ["--frames", "4", "--beams", "1", "--max-new-tokens", "10", "--device", "cpu"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clivid") / "drawn.mp4", n=30)


def _run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "demo.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )


def test_one_shot_subprocess_prints_the_answer(tiny_model_dir, video):
    res = _run(["--model", str(tiny_model_dir), "--video", video, "--question", "what is in the video?", *FAST])
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = res.stdout.rstrip("\n")
    # the same answer as the library gives for the same settings (streamed printing loses nothing)
    from stllm.demo.engine import Chat, ChatEngine, ChatSettings

    chat = Chat(ChatEngine.from_pretrained(tiny_model_dir), ChatSettings(num_frames=4, num_beams=1, max_new_tokens=10))
    chat.load_video(video)
    assert out == chat.ask("what is in the video?")


def test_interactive_subprocess_multi_turn_with_commands(tiny_model_dir, video):
    shared = need(VIDEOS) / "driving.mp4"
    lines = [
        "what is happening?",
        "and after that?",
        "/frames 2",
        "/beams 2",
        "/temperature 0",
        "one more?",
        "/reset",
        f"/video {video}",
        "/video /no/such/file.mp4",
        "/frobnicate",
        "/help",
        "what now?",
        "/quit",
        "never asked",
    ]
    res = _run(["--model", str(tiny_model_dir), "--video", str(shared), *FAST], stdin="\n".join(lines) + "\n")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    out = res.stdout
    assert out.count("ST-LLM: ") == 4  # four questions answered, none after /quit
    for expected in (
        "frames = 2",
        "beams = 2",
        "conversation cleared",
        f"loaded {video}",
        "error: /no/such/file.mp4: file not found",
        "error: unknown command /frobnicate",
        "/video PATH",
    ):
        assert expected in out


def test_bad_video_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is text, not a video")
    rc = demo.main(["--model", str(tiny_model_dir), "--video", str(bad), "--question", "hi", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: cannot read the video:") and "notes.mp4" in err[0]
    rc = demo.main(["--model", str(tmp_path / "nope"), "--video", str(bad), "--question", "hi", *FAST])
    assert rc == 2 and "cannot load the model" in capsys.readouterr().err


def test_main_one_shot_in_process(tiny_model_dir, capsys):
    path = need(VIDEOS) / "monkey.mp4"
    assert demo.main(["--model", str(tiny_model_dir), "--video", str(path), "--question", "what animal?", *FAST]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_run_command_validation(tiny_model_dir, video):
    from stllm.demo.engine import Chat, ChatEngine, ChatSettings

    chat = Chat(ChatEngine.from_pretrained(tiny_model_dir), ChatSettings(num_frames=4))
    chat.load_video(video)
    assert demo.run_command(chat, "/quit") is None
    assert demo.run_command(chat, "/temperature 0.7") == "temperature = 0.7"
    assert chat.settings.do_sample and chat.settings.temperature == 0.7
    demo.run_command(chat, "/temperature 0")
    assert not chat.settings.do_sample
    for bad in ("/beams 0", "/frames x", "/temperature -1", "/beams"):
        with pytest.raises(ValueError):
            demo.run_command(chat, bad)


def test_quickstart_report_prints_a_chat_command_that_runs(tiny_model_dir, tmp_path, monkeypatch):
    """The quickstart's last lines: a chat command on its `all` model and a held-out clip, and the right answer.
    Run here with the tiny model in the model's place (the answer of a trained model: docs/demo.md)."""
    import json
    import shlex
    import shutil

    from stllm.quickstart.run import chat_hint

    out = tmp_path / "runs" / "quickstart"
    (out / "data" / "eval" / "json").mkdir(parents=True)
    item = {"video": "direction_0000.mp4", "question": "Which direction does the square move?"}
    item |= {"candidates": ["left", "right"], "answer": "right"}
    (out / "data" / "eval" / "json" / "direction.json").write_text(json.dumps([item]))
    (out / "data" / "eval" / "videos").mkdir()
    write_video(out / "data" / "eval" / "videos" / "direction_0000.mp4", n=24)
    shutil.copytree(tiny_model_dir, out / "models" / "all")
    monkeypatch.chdir(tmp_path)
    hint = chat_hint(out)
    assert "Best option:(B) right" in hint and "--no-system" in hint and "--answer-prefix 'Best option:('" in hint
    lines = hint.splitlines()
    start = next(i for i, line in enumerate(lines) if "python -m stllm chat" in line)
    command = (lines[start].rstrip("\\") + lines[start + 1]).strip()
    assert "--model runs/quickstart/models/all" in command  # relative to where the user stands
    args = shlex.split(command)[3:]  # after "python -m stllm"
    proc = subprocess.run(
        [sys.executable, "-m", "stllm", *args, "--max-new-tokens", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("Best option:("), proc.stderr[-2000:]
