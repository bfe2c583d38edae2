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
