"""`python -m stllm train` on the tiny recipe: loss goes down, saved dirs reload, resume is bitwise, errors come
early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from stllm.cli import main as cli_main
from stllm.config import ConfigError
from stllm.data.processor import StllmProcessor
from stllm.models.modeling import StllmForConditionalGeneration
from stllm.quickstart.toydata import write_video_dataset
from stllm.train import run
from stllm.train.config import load_train_config
from tests.helpers import VIDEOS, need

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "train" / "tiny.yaml"


def tiny_config(root: Path, out: Path, *overrides: str, init_from: Path):
    return load_train_config(
        TINY,
        [
            f"model.init_from={init_from}",
            f"data.data_root={root}",
            f"train.output_dir={out}",
            "train.per_device_train_batch_size=2",
            "train.logging_steps=1",
            "train.disable_tqdm=true",
            *overrides,
        ],
    )


def losses(out: Path) -> dict[int, dict]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h for h in history if "loss" in h}


def _check_lowers_loss(root: Path, out: Path, init_from: Path) -> None:
    run.train(tiny_config(root, out, "train.max_steps=12", "train.save_strategy=no", init_from=init_from))
    log = losses(out)
    first = sum(log[s]["loss"] for s in (1, 2, 3)) / 3
    last = sum(log[s]["loss"] for s in (10, 11, 12)) / 3
    assert last < 0.8 * first, (first, last)
    for entry in log.values():  # the loss parts and throughput are logged
        assert {"lm_loss", "mvm_loss", "kept_ratio", "samples_per_second", "video_tokens_per_second"} <= set(entry)
        assert 0.3 - 1e-6 <= entry["kept_ratio"] <= 0.9 + 1e-6  # 1 - r, r in [0.1, 0.7] (docs/original.md §2.1)
    # the output dir is a model dir: loads with no conversion and runs
    model = StllmForConditionalGeneration.from_pretrained(out).eval()
    processor = StllmProcessor.from_pretrained(out, model.config)
    ex = processor.training_example("", "Which way does the square move?", "left", num_frames=4)
    batch = processor.collate([ex])
    pixels = torch.randn(1, 4, 3, 28, 28)
    with torch.no_grad():
        assert torch.isfinite(model(**batch, pixel_values=pixels).loss)
    assert (out / "train_config.yaml").is_file()


def test_tiny_recipe_lowers_loss_on_drawn_videos(toy_root, tiny_init, tmp_path):
    _check_lowers_loss(toy_root, tmp_path / "run", tiny_init)


def test_tiny_recipe_lowers_loss_on_shared_videos(tiny_init, tmp_path):
    root = tmp_path / "data"
    write_video_dataset(root, need(VIDEOS))
    _check_lowers_loss(root, tmp_path / "run", tiny_init)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_resume_is_bitwise(toy_root, tiny_init, tmp_path):
    # 8 samples / batch 2 = 4 steps per epoch: stopping at 6 resumes mid-way through the second pass
    common = ["train.max_steps=8", "train.save_strategy=steps", "train.save_steps=3"]
    run.train(tiny_config(toy_root, tmp_path / "a", *common, init_from=tiny_init))
    run.train(tiny_config(toy_root, tmp_path / "b", *common, init_from=tiny_init), callbacks=[StopAt(6)])
    stopped = losses(tmp_path / "b")
    assert max(stopped) == 6 and (tmp_path / "b" / "checkpoint-6").is_dir()
    run.train(tiny_config(toy_root, tmp_path / "b", *common, init_from=tiny_init))  # resume=auto -> checkpoint-6
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    for step in range(1, 9):
        for key in ("loss", "lm_loss", "mvm_loss", "kept_ratio"):
            assert a[step][key] == b[step][key], (step, key, a[step][key], b[step][key])
    wa = StllmForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    wb = StllmForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def no_model(monkeypatch):
    """Model construction fails the test if reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built before the config error was raised")

    monkeypatch.setattr(run, "build_model", forbidden)
    monkeypatch.setattr(StllmForConditionalGeneration, "from_pretrained", forbidden)


def test_bad_override_key_fails_before_the_model(no_model, toy_root, tmp_path, capsys):
    # run.main raises the ConfigError; stllm.cli prints it as one line with exit status 2
    argv = [str(TINY), f"data.data_root={toy_root}", f"train.output_dir={tmp_path}", "train.lerning_rate=1"]
    assert cli_main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and "learning_rate" in err
    with pytest.raises(ConfigError, match="lerning_rate"):
        run.main(argv)


def test_missing_dataset_fails_before_the_model(no_model, tmp_path, capsys):
    recipe = REPO / "configs" / "train" / "stllm_qa.yaml"
    assert cli_main(["train", str(recipe), "data.datasets=[{name: no_such_dataset}]"]) == 2
    assert "no_such_dataset" in capsys.readouterr().err
    # known names, but no annotation files under data_root
    assert cli_main(["train", str(recipe), f"data.data_root={tmp_path}"]) == 2
    assert "annotation files not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="annotation"):
        load_train_config(TINY, [f"data.data_root={tmp_path / 'empty'}"])
