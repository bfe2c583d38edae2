"""Demo arguments (`chat`, `web`): out-of-range values -> one argparse error line, exit status 2, before any model
is loaded; the command-line and the interactive /temperature agree; both demos run from any directory
(docs/reliability.md, Demos)."""

from __future__ import annotations

import sys

import pytest

from stllm.cli import main as cli_main
from stllm.demo import terminal
from stllm.demo.engine import Chat, ChatSettings
from tests.data_media import write_video
from tests.faults import REPO, Run, assert_user_error, run_cli

FAST = ["--frames", "4", "--beams", "1", "--max-new-tokens", "4"]

# (command, bad option, value, what the error line says)
BAD_ARGS = [
    ("chat", "--frames", "0", "below the smallest allowed value, 1"),
    ("chat", "--frames", "-3", "below the smallest allowed value, 1"),
    ("chat", "--frames", "many", "is not a whole number"),
    ("chat", "--beams", "0", "below the smallest allowed value, 1"),
    ("chat", "--max-new-tokens", "0", "below the smallest allowed value, 1"),
    ("chat", "--temperature", "-1", "must be a finite number >= 0"),
    ("chat", "--temperature", "nan", "must be a finite number >= 0"),
    ("chat", "--repetition-penalty", "0", "must be a finite number > 0"),
    ("web", "--frames", "0", "below the smallest allowed value, 1"),
    ("web", "--beams", "-1", "below the smallest allowed value, 1"),
    ("web", "--max-new-tokens", "0", "below the smallest allowed value, 1"),
    ("web", "--max-upload-mb", "-5", "must be a finite number > 0"),
]


@pytest.mark.parametrize(("command", "option", "value", "needle"), BAD_ARGS)
def test_bad_demo_argument_is_one_argparse_line(tmp_path, capsys, command, option, value, needle):
    args = [command, "--model", str(tmp_path / "never_loaded")]
    if command == "chat":
        args += ["--video", str(tmp_path / "never_read.mp4")]
    with pytest.raises(SystemExit) as info:
        cli_main([*args, f"{option}={value}"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert_user_error(Run(2, "", err), f"python -m stllm {command}: error: argument {option}:", needle)
    assert "never_loaded" not in err  # refused before the model folder is looked at


def test_command_line_and_interactive_temperature_agree(engine, video):
    with pytest.raises(SystemExit):
        terminal.parse_args(["--model", "m", "--video", "v", "--temperature", "-1"])
    chat = Chat(engine, ChatSettings(num_frames=4, num_beams=1))
    chat.load_video(video)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        terminal.run_command(chat, "/temperature -1")
    assert terminal.run_command(chat, "/temperature 0.5") == "temperature = 0.5"
    assert terminal.parse_args(["--model", "m", "--video", "v", "--temperature", "0.5"]).temperature == 0.5


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A working directory outside the repository, holding a drawn video under a relative name."""
    root = tmp_path_factory.mktemp("elsewhere")
    write_video(root / "clip.mp4", n=12)
    return root


def test_chat_runs_from_any_directory(tiny_model_dir, elsewhere):
    run = run_cli("chat", "--model", tiny_model_dir, "--video", "clip.mp4", "--question", "hi", *FAST, cwd=elsewhere)
    assert run.rc == 0 and run.stdout.strip(), run.stderr[-2000:]
    assert "Setting accelerator to CPU" not in run.stderr and "repetition_penalty" not in run.stderr


def test_demo_script_runs_from_any_directory(tiny_model_dir, elsewhere):
    import subprocess

    cmd = [sys.executable, str(REPO / "demo.py"), "--model", str(tiny_model_dir), "--video", "clip.mp4"]
    proc = subprocess.run([*cmd, "--question", "hi", *FAST], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-2000:]


def test_web_help_from_any_directory(elsewhere):
    run = run_cli("web", "--help", cwd=elsewhere)
    assert run.rc == 0 and "--share" in run.stdout and "--no-system" in run.stdout


def test_no_system_answer_prefix_and_typed_line_breaks(engine, video):
    """The quickstart's models answer in the training format: no system text, "Best option:(" in front."""
    chat = Chat(
        engine,
        ChatSettings(num_frames=4, num_beams=1, max_new_tokens=3, use_system=False, answer_prefix="Best option:("),
    )
    chat.load_video(video)
    question = terminal.typed_text("Question: which way?\\nOptions:\\n(A) left\\n(B) right")
    assert question == "Question: which way?\nOptions:\n(A) left\n(B) right"
    prompt = chat.build_prompt(question)
    assert prompt.endswith("###Human: " + question + " ###Assistant: Best option:(")
    assert "Carefully watch" not in prompt
    answer = chat.ask(question)
    assert answer.startswith("Best option:(")
    # turn 2 starts its assistant turn with the prefix too; the history keeps the generated part only
    assert chat.history[0][1] == answer[len("Best option:(") :]
    assert chat.build_prompt("again?").endswith("###Human: again? ###Assistant: Best option:(")
