"""Model folders that do not load exactly as saved -> one line, exit status 2, naming the folder and the keys
(docs/reliability.md, Model folders and checkpoints), through `chat`, `web` and `eval` (`python -m stllm ...`)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stllm.cli import main as cli_main
from tests.data_media import write_video
from tests.eval_layouts import CONFIGS, build_mcqa
from tests.faults import Run, assert_user_error, run_cli

WEIGHTS = "model.safetensors"


def _rewrite(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


def _drop(t: dict[str, torch.Tensor]) -> None:
    del t["language_model.model.layers.0.mlp.down_proj.weight"]


def _extra(t: dict[str, torch.Tensor]) -> None:
    t["extra.weight"] = torch.zeros(3)


def _reshape(t: dict[str, torch.Tensor]) -> None:
    w = t["vision_model.encoder.layers.0.mlp.fc1.weight"]
    t["vision_model.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(w.shape[0] + 1, w.shape[1])


def _nan(t: dict[str, torch.Tensor]) -> None:
    t["language_model.model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


# case -> (how to break a copy of the tiny model folder, what the one error line must say)
CASES: dict[str, tuple[Callable[[Path], object], tuple[str, ...]]] = {
    "tensor_missing": (lambda d: _rewrite(d, _drop), ("missing from the weight files", "mlp.down_proj.weight")),
    "tensor_extra": (lambda d: _rewrite(d, _extra), ("the model does not have", "extra.weight")),
    "wrong_shape": (lambda d: _rewrite(d, _reshape), ("wrong shape", "fc1.weight [129, 64] in the files")),
    "non_finite": (lambda d: _rewrite(d, _nan), ("NaN or inf", "mlp.up_proj.weight")),
    "truncated_weights": (_truncate, ("model.safetensors", "truncated safetensors file")),
    "no_weights": (lambda d: (d / WEIGHTS).unlink(), ("no checkpoint found",)),
    "no_llm_tokenizer": (lambda d: (d / "tokenizer.model").unlink(), ("tokenizer files missing", "tokenizer.model")),
    "no_qformer_tokenizer": (
        lambda d: shutil.rmtree(d / "qformer_tokenizer"),
        ("tokenizer files missing", "qformer_tokenizer/vocab.txt"),
    ),
    "config_not_json": (lambda d: (d / "config.json").write_text("{not json"), ("config.json", "JSONDecodeError")),
    "config_bad_value": (
        lambda d: (d / "config.json").write_text(
            json.dumps({**json.loads((d / "config.json").read_text()), "video_input": "bogus"})
        ),
        ("config.json", "video_input must be one of"),
    ),
    "no_config": (lambda d: (d / "config.json").unlink(), ("not a model folder (config.json not found)",)),
}


@pytest.fixture(scope="module")
def broken(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken_models")
    out = {}
    for name, (breaker, _) in CASES.items():
        folder = root / name
        shutil.copytree(tiny_model_dir, folder)
        breaker(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_video(tmp_path_factory.mktemp("model_faults_video") / "v.mp4", n=12)


def _cli(capsys, *args: str | Path) -> Run:
    rc = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return Run(rc, captured.out, captured.err)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chat_refuses_a_broken_model_folder_in_one_line(broken, clip, capsys, case):
    run = _cli(capsys, "chat", "--model", broken[case], "--video", clip, "--question", "hi", "--frames", "2")
    line = assert_user_error(run, str(broken[case]), *CASES[case][1])
    assert len([x for x in run.stderr.splitlines() if x.strip()]) == 1, run.stderr  # no LOAD REPORT table either
    assert line.startswith("error: cannot load the model: ")


@pytest.mark.parametrize("case", ["tensor_missing", "wrong_shape", "no_qformer_tokenizer", "config_not_json"])
def test_web_refuses_a_broken_model_folder_in_one_line(broken, capsys, case):
    run = _cli(capsys, "web", "--model", broken[case])
    assert_user_error(run, str(broken[case]), *CASES[case][1])


@pytest.fixture(scope="module")
def mvbench_root(tmp_path_factory) -> Path:
    return build_mcqa(tmp_path_factory.mktemp("mvbench_for_model_faults"))


@pytest.mark.parametrize("case", ["tensor_extra", "wrong_shape", "non_finite", "truncated_weights", "no_llm_tokenizer"])
def test_eval_refuses_a_broken_model_folder_and_writes_no_predictions(broken, mvbench_root, tmp_path, capsys, case):
    out = tmp_path / "out"
    run = _cli(
        capsys,
        "eval",
        CONFIGS / "mvbench.yaml",
        "--model",
        broken[case],
        f"data_root={mvbench_root}",
        f"output_dir={out}",
    )
    assert_user_error(run, "stllm eval: error:", str(broken[case]), *CASES[case][1])
    assert not (out / "predictions.jsonl").exists()


def test_absent_local_folder_is_refused_at_once_without_the_hub(tmp_path, clip):
    """A path that does not exist is never looked up online (offline Hub retries took a minute)."""
    start = time.monotonic()
    run = run_cli(
        "chat", "--model", tmp_path / "no_such_model", "--video", clip, "--question", "hi", env={"HF_HUB_OFFLINE": "0"}
    )
    assert_user_error(run, "no_such_model", "no such model folder")
    run = run_cli(
        "chat",
        "--model",
        "runs/not_here",
        "--video",
        clip,
        "--question",
        "hi",
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "0"},
    )
    assert_user_error(run, "runs/not_here", "no such model folder")
    assert time.monotonic() - start < 60  # two interpreter starts; a Hub lookup alone took about a minute


def test_eval_subprocess_wrong_shape(broken, mvbench_root, tmp_path):
    run = run_cli(
        "eval",
        str(CONFIGS / "mvbench.yaml"),
        "--model",
        str(broken["wrong_shape"]),
        f"data_root={mvbench_root}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert_user_error(run, "stllm eval: error:", "wrong shape", "vision_model.encoder.layers.0.mlp.fc1.weight")
    assert "LOAD REPORT" not in run.stderr
