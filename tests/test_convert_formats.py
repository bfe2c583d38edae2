"""Every accepted source layout -> the same converted model; every broken source -> an error that names the problem."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from stllm.checkpoints.convert import main as convert_main
from stllm.checkpoints.io import CheckpointError, list_shards
from stllm.checkpoints.keymap import KeyMappingError
from stllm.models.modeling import StllmForConditionalGeneration
from tests.helpers import REFERENCE as REF
from tests.helpers import reference_config


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return load_file(REF / "weights_qa.safetensors")


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory, original: dict) -> dict[str, torch.Tensor]:
    d = tmp_path_factory.mktemp("baseline")
    save_file(original, d / "model.safetensors")
    return _convert(d, d / "out")


def _config(tmp: Path) -> Path:
    path = tmp / "stllm_config.json"
    reference_config("qa").to_json_file(str(path))
    return path


def _convert(src: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    cfg = _config(out.parent)
    args = [
        "--from-stllm",
        str(src),
        "--recipe",
        "qa",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--dtype",
        "float32",
        "--no-tokenizer",
    ]
    assert convert_main(args + list(extra)) == 0
    model, info = StllmForConditionalGeneration.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.state_dict()


def _split(state: dict, n: int) -> list[dict]:
    keys = list(state)
    return [{k: state[k] for k in keys[i::n]} for i in range(n)]


def write_bin_shards(state: dict, d: Path, n: int = 3, index: bool = True) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    files, weight_map = [], {}
    for i, part in enumerate(_split(state, n), start=1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        torch.save(part, d / name)
        files.append(d / name)
        weight_map.update({k: name for k in part})
    if index:
        (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def write_st_shards(state: dict, d: Path, n: int = 2) -> None:
    d.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, part in enumerate(_split(state, n), start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in part.items()}, d / name)
        weight_map.update({k: name for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("layout", ["bin_index", "bin_no_index", "bin_single", "st_sharded", "pth_lavis_wrapped"])
def test_every_layout_converts_identically(tmp_path: Path, original: dict, expected: dict, layout: str) -> None:
    src = tmp_path / "src"
    if layout == "bin_index":
        write_bin_shards(original, src)
    elif layout == "bin_no_index":
        write_bin_shards(original, src, index=False)  # what the original's regex loader read (docs/original.md §6.3)
    elif layout == "bin_single":
        src.mkdir()
        torch.save(original, src / "pytorch_model.bin")  # a ZeRO-3 run's file, silently ignored by the original
    elif layout == "st_sharded":
        write_st_shards(original, src)
    else:
        src.mkdir()
        torch.save({"model": original}, src / "checkpoint.pth")
        src = src / "checkpoint.pth"
    _same(_convert(src, tmp_path / "out"), expected)


def test_hf_instructblip_layout_is_a_training_start(tmp_path: Path, expected: dict) -> None:
    """Our names (transformers InstructBLIP): no BT-Adapter/MVM in the file, so they are initialised or copied."""
    src = tmp_path / "hf"
    hf = {k: v for k, v in expected.items() if not k.startswith(("btadapter.", "mvm_decoder."))}
    hf["qformer.embeddings.position_ids"] = torch.arange(512)[None]
    write_bin_shards(hf, src, n=2)
    out = tmp_path / "out"
    assert (
        convert_main(
            [
                "--from-hf-instructblip",
                str(src),
                "--no-tokenizer",
                "--recipe",
                "qa",
                "--config",
                str(_config(tmp_path)),
                "--out",
                str(out),
                "--no-vit-fp16",
            ]
        )
        == 0
    )
    got = StllmForConditionalGeneration.from_pretrained(out, dtype=torch.float32).state_dict()
    for k in hf:
        if k in got:
            assert torch.equal(got[k], hf[k]), k
    assert torch.equal(
        got["btadapter.spatial.2.layer.mlp.fc1.weight"], hf["vision_model.encoder.layers.3.mlp.fc1.weight"]
    )
    assert torch.count_nonzero(got["btadapter.temporal.1.temporal_fc.bias"]) == 0


# ------------------------------------------------------------------------------------------------ failures
def _fails(tmp_path: Path, state: dict | None = None, src: Path | None = None) -> str:
    if src is None:
        src = tmp_path / "src"
        src.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, src / "model.safetensors")
    with pytest.raises((KeyMappingError, CheckpointError)) as err:
        _convert(src, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.safetensors")), "a failed conversion must not leave shards behind"
    return str(err.value)


def test_missing_key(tmp_path: Path, original: dict) -> None:
    state = dict(original)
    del state["model.stllm_model.mvm_decoder.head.bias"]
    assert "have no value in any source" in (msg := _fails(tmp_path, state)) and "mvm_decoder.head.bias" in msg


def test_extra_key(tmp_path: Path, original: dict) -> None:
    msg = _fails(tmp_path, dict(original, **{"model.stllm_model.extra_head.weight": torch.zeros(2)}))
    assert "no mapping rule" in msg and "model.stllm_model.extra_head.weight" in msg


def test_wrong_shape(tmp_path: Path, original: dict) -> None:
    msg = _fails(tmp_path, dict(original, **{"model.norm.weight": torch.ones(65)}))
    assert "language_model.model.norm.weight has shape (65,), the model needs (64,)" in msg


def test_alias_must_equal_the_embedding(tmp_path: Path, original: dict) -> None:
    alias = original["model.stllm_model.embed_tokens.weight"] + 1
    msg = _fails(tmp_path, dict(original, **{"model.stllm_model.embed_tokens.weight": alias}))
    assert "differs from model.embed_tokens.weight" in msg


def test_truncated_shard(tmp_path: Path, original: dict) -> None:
    files = write_bin_shards(original, tmp_path / "src")
    files[1].write_bytes(files[1].read_bytes()[:-200])
    msg = _fails(tmp_path, src=tmp_path / "src")
    assert files[1].name in msg and "truncated" in msg


def test_truncated_safetensors(tmp_path: Path, original: dict) -> None:
    write_st_shards(original, tmp_path / "src")
    f = tmp_path / "src" / "model-00002-of-00002.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    msg = _fails(tmp_path, src=tmp_path / "src")
    assert f.name in msg and "truncated" in msg


def test_missing_shard_in_index(tmp_path: Path, original: dict) -> None:
    files = write_bin_shards(original, tmp_path / "src")
    files[2].unlink()
    msg = _fails(tmp_path, src=tmp_path / "src")
    assert "do not exist" in msg and files[2].name in msg
    (tmp_path / "src" / "pytorch_model.bin.index.json").unlink()  # the regex layout: the gap is found too
    with pytest.raises(CheckpointError, match="1 of 3 shards are missing.*pytorch_model-00003-of-00003.bin"):
        list_shards(tmp_path / "src")


def test_pickle_needing_more_than_weights(tmp_path: Path, original: dict) -> None:
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"model": original, "args": argparse.Namespace(lr=1e-4)}, src / "pytorch_model.bin")
    msg = _fails(tmp_path, src=src)
    assert "pytorch_model.bin" in msg and "refusing to load" in msg and "weights_only" in msg


@pytest.mark.parametrize("content", [b"this is a README, not weights\n" * 10, bytes(range(256)) * 4])
def test_non_checkpoint_file(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pytorch_model.bin").write_bytes(content)
    msg = _fails(tmp_path, src=src)
    assert "pytorch_model.bin" in msg and "not a checkpoint" in msg


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert "no checkpoint found" in _fails(tmp_path, src=tmp_path / "src")


def test_missing_tokenizer_fails_before_converting(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(SystemExit, match="--llm-tokenizer tokenizer.model and --qformer-vocab vocab.txt"):
        convert_main(["--from-stllm", str(src), "--recipe", "qa", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing written
