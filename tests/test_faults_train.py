"""Training faults through the public entry points (docs/reliability.md, Training): a diverging run stops with one
line naming the step and saves nothing non-finite; a kill while saving a checkpoint never leaves a folder that is
taken for complete; malformed annotation items are dropped, counted and listed, never a crash."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from stllm.cli import main as cli_main
from stllm.train import run
from stllm.train.trainer import COMPLETE_FILE
from tests.faults import REPO, assert_user_error, run_cli

TINY = REPO / "configs" / "train" / "tiny.yaml"


def train_args(root: Path, out: Path, init: Path, *overrides: str) -> list[str]:
    return [
        str(TINY),
        f"model.init_from={init}",
        f"data.data_root={root}",
        f"train.output_dir={out}",
        "train.per_device_train_batch_size=2",
        "train.logging_steps=1",
        "train.disable_tqdm=true",
        *overrides,
    ]


def losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def all_finite(folder: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(folder / "model.safetensors")).values())


# ------------------------------------------------------------------------------------------ divergence (#16 item 1)
def test_diverging_learning_rate_stops_at_the_step_and_saves_nothing_non_finite(toy_root, tiny_init, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(toy_root, out, tiny_init, "train.learning_rate=1e12", "train.max_steps=8")
    rc = cli_main(["train", *args, "train.save_strategy=steps", "train.save_steps=1", "train.save_total_limit=3"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("stllm train: error:")]
    assert len(lines) == 1 and "training diverged at step" in lines[0] and "learning_rate" in lines[0], err[-2000:]
    assert "Traceback" not in err
    step = int(lines[0].split("at step ")[1].split()[0])
    assert 1 < step < 8
    # nothing from the diverged step was saved, no final model, every kept checkpoint is finite and complete
    assert not (out / f"checkpoint-{step}").exists() and not (out / "model.safetensors").exists()
    kept = sorted(out.glob("checkpoint-*"))
    assert kept and all((c / COMPLETE_FILE).is_file() and all_finite(c) for c in kept)
    assert max(int(c.name.split("-")[1]) for c in kept) == step - 1
    assert f"checkpoint-{step - 1}" in lines[0]


class PoisonWeights(TrainerCallback):
    """Puts an inf into one trainable weight after the optimizer step of `step` (a NaN/inf gradient's effect)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step and model is not None:
            p = next(p for p in model.parameters() if p.requires_grad)
            with torch.no_grad():
                p.view(-1)[0] = float("inf")


def test_non_finite_weights_after_a_step_stop_before_that_step_is_saved(toy_root, tiny_init, tmp_path):
    from stllm.train.config import load_train_config
    from stllm.train.trainer import TrainingDivergedError

    out = tmp_path / "run"
    cfg = load_train_config(
        TINY,
        train_args(toy_root, out, tiny_init, "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=5")[1:],
    )
    with pytest.raises(TrainingDivergedError, match=r"at step 4 .*parameter .* not finite.*checkpoint-2"):
        run.train(cfg, callbacks=[PoisonWeights(4)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and all_finite(out / "checkpoint-2")


# ------------------------------------------------------------------------------- kill while saving (#16 item 2)
KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from stllm.train import trainer
    step = int(sys.argv[1])
    save_into = trainer.SaveExtrasCallback.save_into
    def killed(self, directory):
        save_into(self, directory)  # the Trainer's files and ours are written; the completion marker is not
        if str(directory).endswith(f"checkpoint-{step}"):
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.SaveExtrasCallback.save_into = killed
    from stllm.cli import main
    sys.exit(main(["train", *sys.argv[2:]]))
    """
)


def test_kill_while_saving_resumes_from_the_previous_complete_checkpoint(toy_root, tiny_init, tmp_path):
    import subprocess
    import sys

    common = ["train.max_steps=6", "train.save_steps=2", "train.save_total_limit=1"]
    ref = tmp_path / "ref"
    assert cli_main(["train", *train_args(toy_root, ref, tiny_init, *common)]) == 0
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, "4", *train_args(toy_root, out, tiny_init, *common)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    # save_total_limit=1: the previous complete checkpoint survives a kill during the next save
    assert (out / "checkpoint-2" / COMPLETE_FILE).is_file()
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / COMPLETE_FILE).exists()
    assert run.latest_checkpoint(out) == str(out / "checkpoint-2")
    rerun = run_cli("train", *train_args(toy_root, out, tiny_init, *common), cwd=REPO)
    assert rerun.rc == 0, rerun.stderr[-3000:]
    assert "checkpoint-4 is incomplete" in rerun.stderr and "resuming from" in rerun.stderr
    # nothing lost: the resumed run logs what the uninterrupted one logs and ends with the same weights
    assert losses(out) == losses(ref)
    wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # rotation after completion


def test_partial_checkpoint_folders_are_never_resumed(toy_root, tiny_init, tmp_path, caplog):
    out = tmp_path / "run"
    assert cli_main(["train", *train_args(toy_root, out, tiny_init, "train.max_steps=2", "train.save_steps=2")]) == 0
    assert run.latest_checkpoint(out) == str(out / "checkpoint-2")
    (out / "checkpoint-4").mkdir()  # killed right after the Trainer created the folder: empty
    partial = out / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)  # killed while writing the weights
    with caplog.at_level("WARNING"):
        assert run.latest_checkpoint(out) == str(out / "checkpoint-2")
    assert "checkpoint-6 is incomplete" in caplog.text
    for folder in out.glob("checkpoint-*"):
        (folder / COMPLETE_FILE).unlink(missing_ok=True)
    assert run.latest_checkpoint(out) is None  # no complete one: start from scratch


# ------------------------------------------------------------------------------ bad annotation items (#16 item 3)
BAD_ITEMS = [
    {"video": 123, "QA": [{"q": "q", "a": "a"}]},
    {"video": "videos/000.mp4", "QA": [{"i": "", "q": "q", "a": 5}]},
    {"video": "videos/001.mp4", "QA": [{"q": ["not", "text"], "a": "a"}]},
    {"video": "videos/002.mp4", "start": "abc", "end": 2, "QA": [{"q": "q", "a": "a"}]},
    {"video": "videos/003.mp4", "QA": "not a list"},
    "just a string",
]


def with_bad_items(toy_root: Path, tmp_path: Path, extra: list) -> Path:
    items = json.loads((toy_root / "anno" / "toy.json").read_text())
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps(items + extra))
    return anno


def test_bad_annotation_items_are_dropped_and_counted_in_training(toy_root, tiny_init, tmp_path, caplog):
    anno = with_bad_items(toy_root, tmp_path, BAD_ITEMS)
    args = train_args(toy_root, tmp_path / "run", tiny_init, "train.max_steps=2", "train.save_strategy=no")
    args.append(f"data.datasets=[{{name: toy, annotation: {anno}, media_type: video, num_frames: 4}}]")
    with caplog.at_level("WARNING"):
        assert cli_main(["train", *args]) == 0
    assert "dropped 6 malformed items" in caplog.text and "item 8: 'video' is 123" in caplog.text
    assert "6 malformed annotation items dropped" in caplog.text
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_annotation_with_no_usable_item_or_not_json_is_one_line(toy_root, tiny_init, tmp_path):
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps(BAD_ITEMS))
    base = train_args(toy_root, tmp_path / "run", tiny_init, "train.max_steps=2")
    spec = f"data.datasets=[{{name: toy, annotation: {anno}, media_type: video, num_frames: 4}}]"
    ran = run_cli("train", *base, spec)
    assert_user_error(ran, str(anno), "no usable items", "'video' is 123")
    anno.write_text('[{"video": "videos/000.mp4", "QA": [')
    ran = run_cli("train", *base, spec)
    assert_user_error(ran, str(anno), "not valid JSON")


def test_data_check_lists_bad_items_and_windows_past_the_end(toy_root, tmp_path):
    # the drawn videos have 12 frames at 8 fps (1.5 s): a window to 30 s runs past the end
    window = [{"video": "videos/004.mp4", "start": 0.5, "end": 30, "QA": [{"q": "q", "a": "a"}]}]
    anno = with_bad_items(toy_root, tmp_path, BAD_ITEMS + window)
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        f"data_root: {toy_root}\ndatasets:\n  - {{name: toy, annotation: {anno}, media_type: video, num_frames: 4}}\n"
    )
    ran = run_cli("data", "check", str(cfg), "--all", "--max-bad", "0.5", cwd=REPO)
    assert ran.rc == 0 and "Traceback" not in ran.stderr, ran.stdout + ran.stderr
    row = next(line for line in ran.stdout.splitlines() if line.startswith("toy "))
    # items dropped missing decoded unreadable clamped status
    assert row.split()[3:10] == ["9", "6", "0", "9", "0", "1", "WARN"], ran.stdout
    assert "item 8 of" in ran.stdout and "'video' is 123" in ran.stdout
    assert "QA[0].a is int" in ran.stdout and "QA[0].q is list" in ran.stdout and "'start' is 'abc'" in ran.stdout
    assert "'QA' is str" in ran.stdout and "not a JSON object (str)" in ran.stdout
    assert "window past the end" in ran.stdout and "004.mp4" in ran.stdout and "clamps" in ran.stdout
    strict = run_cli("data", "check", str(cfg), cwd=REPO)  # 6 of 15 items dropped > --max-bad 0.01: BROKEN
    assert strict.rc == 1 and "BROKEN" in strict.stdout, strict.stdout


def test_batch_larger_than_the_dataset_is_one_line(toy_root, tiny_init, tmp_path, capsys):
    args = train_args(toy_root, tmp_path / "run", tiny_init, "train.max_steps=2")
    assert cli_main(["train", *args, "train.per_device_train_batch_size=64"]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("stllm train: error:"))
    assert "train.per_device_train_batch_size=64" in line and "sizes [8]" in line and "Traceback" not in err
