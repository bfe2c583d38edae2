"""`python -m stllm inspect DIR`: recipe, counts, dtypes, tokenizer ids and a fingerprint that follows the content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stllm.checkpoints.convert import main as convert_main
from stllm.checkpoints.inspect import describe
from stllm.checkpoints.inspect import main as inspect_main
from tests.helpers import REFERENCE as REF
from tests.helpers import reference_config


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("inspect")
    reference_config("qa").to_json_file(str(tmp / "config.json"))
    src = tmp / "src"
    src.mkdir()
    (src / "model.safetensors").symlink_to(REF / "weights_qa.safetensors")
    tok = REF / "tokenizers"
    convert_main(
        [
            "--from-stllm",
            str(src),
            "--no-tokenizer",
            "--recipe",
            "qa",
            "--config",
            str(tmp / "config.json"),
            "--out",
            str(tmp / "out"),
            "--max-shard-size",
            "1MB",
            "--llm-tokenizer",
            str(tok / "llama_tiny" / "tokenizer.model"),
            "--qformer-vocab",
            str(tok / "bert_tiny" / "vocab.txt"),
        ]
    )
    return tmp / "out"


def test_readable_block_and_json(converted: Path, capsys: pytest.CaptureFixture) -> None:
    assert inspect_main([str(converted)]) == 0
    text = capsys.readouterr().out
    for line in ("video input     all", "BT-Adapter      on", "F16 x256", "bos=2", "pad=512", "fingerprint     "):
        assert line in text, line
    assert inspect_main([str(converted), "--json", "--no-fingerprint"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fingerprint_sha256"] is None and info["keys_missing_from_files"] == []
    assert 0 < info["parameters_trainable"] < info["parameters_total"]
    assert info["tokenizer"]["vocab_size"] == 513 and len(list(converted.glob("model-*.safetensors"))) > 1


def test_fingerprint_follows_content_not_layout(converted: Path, tmp_path: Path) -> None:
    first = describe(converted)["fingerprint_sha256"]
    single = tmp_path / "single"
    single.mkdir()
    state = {}
    for f in sorted(converted.glob("model-*.safetensors")):
        state.update(load_file(f))
    save_file(state, single / "model.safetensors")
    (single / "config.json").write_text((converted / "config.json").read_text())
    assert describe(single)["fingerprint_sha256"] == first  # resharding does not change it
    state["language_model.model.norm.weight"] = (
        state["language_model.model.norm.weight"] + torch.finfo(torch.float16).eps
    )
    save_file(state, single / "model.safetensors")
    assert describe(single)["fingerprint_sha256"] != first


def _inspect_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from stllm.cli import main as cli_main

    rc = cli_main(["inspect", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _copy_with(tiny: Path, dst: Path, change) -> Path:
    import shutil

    shutil.copytree(tiny, dst)
    tensors = load_file(dst / "model.safetensors")
    change(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_wrong_shape_and_non_finite_tensors_exit_1_with_a_warning(tiny_model_dir, tmp_path, capsys) -> None:
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"

    def reshape(t: dict) -> None:
        t[key] = torch.zeros(t[key].shape[0] + 1, t[key].shape[1])

    def nan(t: dict) -> None:
        t["language_model.model.layers.0.mlp.up_proj.weight"][0, 0] = float("inf")

    rc, out, _ = _inspect_cli(capsys, str(_copy_with(tiny_model_dir, tmp_path / "shape", reshape)))
    assert rc == 1 and f"1 of the wrong shape: ['{key} [129, 64] in files, [128, 64] in model']" in out
    rc, out, _ = _inspect_cli(capsys, str(_copy_with(tiny_model_dir, tmp_path / "nan", nan)), "--json")
    info = json.loads(out)
    assert rc == 1 and info["non_finite_tensors"] == ["language_model.model.layers.0.mlp.up_proj.weight"]
    rc, out, _ = _inspect_cli(capsys, str(tiny_model_dir))
    assert rc == 0 and "NaN / inf       none" in out and "WARNING" not in out


def _empty(d: Path) -> None:
    d.mkdir()


def _bad_config(d: Path, tiny: Path) -> None:
    import shutil

    shutil.copytree(tiny, d)
    (d / "config.json").write_text("{not json")


def _truncated(d: Path, tiny: Path) -> None:
    import shutil

    shutil.copytree(tiny, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _bin_only(d: Path, tiny: Path) -> None:
    d.mkdir()
    (d / "config.json").write_text((tiny / "config.json").read_text())
    torch.save(load_file(tiny / "model.safetensors"), d / "pytorch_model.bin")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("absent", "no such model folder"),
        ("empty", "not a model folder (config.json not found)"),
        ("bad_config", "config.json: not a readable StllmConfig"),
        ("truncated", "model.safetensors: truncated safetensors file"),
        ("bin_only", "pytorch_model.bin: inspect reads safetensors weight files only"),
    ],
)
def test_unreadable_folders_are_one_line_rc_2(tiny_model_dir, tmp_path, capsys, case, needle) -> None:
    folder = tmp_path / case
    if case == "empty":
        _empty(folder)
    elif case == "bad_config":
        _bad_config(folder, tiny_model_dir)
    elif case == "truncated":
        _truncated(folder, tiny_model_dir)
    elif case == "bin_only":
        _bin_only(folder, tiny_model_dir)
    rc, out, err = _inspect_cli(capsys, str(folder))
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("stllm inspect: error: ") and needle in lines[0] and str(folder) in lines[0]
