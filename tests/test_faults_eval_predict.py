"""Faults of `python -m stllm eval` (docs/reliability.md, "Evaluation, phase 1"): another model's predictions, lines
without a prediction's fields, a second process, every item failing, settings that fail, the frame size and the
running accuracy. Through the public entry points: `python -m stllm eval` (tests/faults.py) or `main(argv)`/`run`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stllm.config import load_config
from stllm.eval.config import EvalConfig
from stllm.eval.predict import run
from stllm.eval.records import read_records
from tests.eval_layouts import CONFIGS, build_mcqa, fake_answerer
from tests.faults import assert_user_error, run_cli

MV = str(CONFIGS / "mvbench.yaml")
FAST = ["frames.num_frames=4", "generation.max_new_tokens=2", "--workers", "0"]


@pytest.fixture(scope="module")
def mv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mcqa(tmp_path_factory.mktemp("mvbench"))


def _eval(model: Path | str, root: Path, out: Path, *extra: str):
    return run_cli("eval", MV, "--model", str(model), f"data_root={root}", f"output_dir={out}", *FAST, *extra)


def _cfg(root: Path, out: Path, *extra: str) -> EvalConfig:
    return load_config(EvalConfig, CONFIGS / "mvbench.yaml", [f"data_root={root}", f"output_dir={out}", *extra])


def _other_model(src: Path, dst: Path) -> Path:
    """A copy of the model with one weight byte changed: same architecture, different content."""
    shutil.copytree(src, dst)
    weights = sorted(dst.glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return dst


def test_resume_by_another_model_is_refused(tiny_model_dir: Path, mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _eval(tiny_model_dir, mv_root, out, "limit=2")
    assert first.rc == 0, first.stderr[-2000:]
    info = json.loads((out / "run_info.json").read_text())
    identity = info["model_identity"]
    assert identity["path"] == str(Path(tiny_model_dir).resolve()) and len(identity["fingerprint"]) == 64
    assert all(r["model"] == identity for r in read_records(out / "predictions.jsonl"))
    other = _other_model(Path(tiny_model_dir), tmp_path / "other_model")
    refused = _eval(other, mv_root, out, "limit=3")
    line = assert_user_error(refused, str(out), "another model", "fresh output_dir", "same --model")
    assert str(other) in line
    assert len(read_records(out / "predictions.jsonl")) == 2  # nothing lost, nothing added
    # the same content under another path is the same model: the resume goes on
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    again = _eval(copy, mv_root, out, "limit=3")
    assert again.rc == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {"answered": 1, "errors": 0, "skipped": 2}


def test_line_without_prediction_fields_is_redone(mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(_cfg(mv_root, out, "limit=4"), "fake-model", fake_answerer, num_workers=0)
    pred = out / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    victim = json.loads(lines[1])["id"]
    lines[1] = json.dumps({"id": victim})  # valid JSON, not a prediction
    pred.write_text("\n".join(lines) + "\n")
    assert [r["id"] for r in read_records(pred)].count(victim) == 0
    counts = run(_cfg(mv_root, out, "limit=4"), "fake-model", fake_answerer, num_workers=0)
    assert counts == {"answered": 1, "errors": 0, "skipped": 3}
    recs = read_records(pred)
    assert [r["id"] for r in recs].count(victim) == 1 and len(pred.read_text().splitlines()) == 4
    scored = run_cli("score", str(out))
    assert scored.rc == 0 and "Traceback" not in scored.stderr, scored.stderr[-2000:]


def test_live_lock_refuses_stale_lock_is_taken_over(mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "eval.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # this test process: alive
    with pytest.raises(SystemExit, match=f"pid {os.getpid()}"):
        run(_cfg(mv_root, out, "limit=2"), "fake-model", fake_answerer, num_workers=0)
    assert lock.is_file() and not (out / "predictions.jsonl").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    counts = run(_cfg(mv_root, out, "limit=2"), "fake-model", fake_answerer, num_workers=0)
    assert counts["answered"] == 2 and not lock.exists()  # taken over, then released


def test_live_lock_through_the_cli(tiny_model_dir: Path, mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    refused = _eval(tiny_model_dir, mv_root, out, "limit=1")
    assert_user_error(refused, "eval.lock", f"pid {os.getpid()}")
    assert not (out / "predictions.jsonl").exists() and not (out / "eval_config.yaml").exists()


def test_every_item_failing_exits_1_partial_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = build_mcqa(tmp_path / "mv")
    for clip in (root / "video").rglob("*.mp4"):
        clip.unlink()  # the task folders stay: each item is a counted failure
    out = tmp_path / "out"
    failed = _eval(tiny_model_dir, root, out, "limit=3")
    line = assert_user_error(failed, "all 3 items failed", "3 x file not found (first: ", rc=1)
    assert str(root / "video") in line
    assert len(read_records(out / "predictions.jsonl")) == 3  # recorded, retried on the next run
    root2 = build_mcqa(tmp_path / "mv2")
    next((root2 / "video").rglob("action_sequence_0.mp4")).unlink()
    partial = _eval(tiny_model_dir, root2, tmp_path / "out2", "only_tasks=[action_sequence,action_prediction]")
    assert partial.rc == 0, partial.stderr[-2000:]
    assert "1 of 2 items failed: 1 x file not found" in partial.stderr and "Traceback" not in partial.stderr


def test_wrong_frame_size_fails_before_anything_is_written(tiny_model_dir: Path, mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = _eval(tiny_model_dir, mv_root, out, "limit=1", "frames.size=32")
    assert_user_error(bad, "frames.size=32", "28x28")
    assert not (out / "eval_config.yaml").exists() and not (out / "predictions.jsonl").exists()
    good = _eval(tiny_model_dir, mv_root, out, "limit=1")  # frames.size from the model: no shape traceback
    assert good.rc == 0, good.stderr[-2000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["frames"]["size"] == 28


def test_output_dir_in_a_file_and_missing_model(mv_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    bad = _eval("no-model", mv_root, blocker / "out", "limit=1")
    assert_user_error(bad, "output_dir=", "is a file, not a folder")
    out = tmp_path / "out"
    missing = _eval(tmp_path / "no-model", mv_root, out, "limit=1")
    assert_user_error(missing, "--model", "no-model", "config.json not found")
    assert not out.exists()


def test_running_accuracy_in_the_progress_bar(mv_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(_cfg(mv_root, tmp_path / "out", "limit=5"), "fake-model", fake_answerer, num_workers=0)
    err = capsys.readouterr().err
    assert "acc " in err and "strict " in err and "%" in err


def test_item_error_of_the_reader_is_never_answered(tmp_path: Path) -> None:
    """An MVBench item whose end lies before its start is recorded as an error without reaching the model."""
    root = build_mcqa(tmp_path / "mv", per_task=2)
    path = root / "json" / "action_sequence.json"
    rows = json.loads(path.read_text())
    rows[1].update(start=3.0, end=1.0)
    path.write_text(json.dumps(rows))
    seen: list[str] = []

    def answerer(pixel_values, prompts, qformer_texts):
        seen.extend(prompts)
        return fake_answerer(pixel_values, prompts, qformer_texts)

    out = tmp_path / "out"
    counts = run(_cfg(root, out, "limit=3"), "fake-model", answerer, num_workers=0)
    assert counts["errors"] == 1 and counts["answered"] == 2 and len(seen) == 2
    bad = [r for r in read_records(out / "predictions.jsonl") if r["error"]]
    assert [r["id"] for r in bad] == ["action_sequence/1"] and "lies before start" in bad[0]["error"]
