"""Original key lists (../shared/checkpoint-keys) -> our full-size presets on the meta device: every key maps, fits."""

from __future__ import annotations

import json
import re

import pytest
import torch

from stllm.checkpoints.convert import meta_model
from stllm.checkpoints.keymap import check_state_dict_fits, convert_original_state_dict
from stllm.models.configuration import preset_config
from tests.helpers import CHECKPOINT_KEYS as KEYS

pytestmark = pytest.mark.skipif(not KEYS.is_dir(), reason="../shared/checkpoint-keys is not available")


@pytest.fixture(scope="module")
def models() -> dict:
    return {name: meta_model(preset_config(name)) for name in ("stllm-qa", "stllm-conversation")}


def _convert(entries: list, prefix: str = "", renames: tuple = ()) -> tuple[dict, dict, list]:
    source = {}
    for entry in entries:  # [name, shape, dtype(, requires_grad)]
        key = prefix + entry[0]
        for old, new in renames:
            key = re.sub(old, new, key)
        source[key] = torch.empty(entry[1], device="meta")
    unknown: list[str] = []
    result = convert_original_state_dict(source, unknown=unknown)
    assert not result.pending
    return result.state_dict, result.skipped, unknown


@pytest.mark.parametrize(
    "name,preset",
    [
        ("keys_qa_fullsize.json", "stllm-qa"),
        ("keys_qa_fullsize_transformers4.28.json", "stllm-qa"),
        ("keys_conversation_fullsize.json", "stllm-conversation"),
        ("keys_conversation_fullsize_transformers4.28.json", "stllm-conversation"),
    ],
)
def test_released_keys_map_onto_the_preset(models: dict, name: str, preset: str) -> None:
    state, skipped, unknown = _convert(json.loads((KEYS / name).read_text()))
    assert unknown == []
    check_state_dict_fits(state, models[preset], name)  # no missing, no extra, every shape equal
    reasons = set(skipped.values())
    assert any("alias" in r for r in reasons)
    if "4.28" in name:
        assert sum("inv_freq" in k for k in skipped) == 32


def test_eva_keys_fill_exactly_the_vision_tower(models: dict) -> None:
    entries = json.loads((KEYS / "keys_eva_vit_g_fullsize.json").read_text())
    state, _, unknown = _convert(entries, "model.stllm_model.visual_encoder.")
    assert unknown == []
    model = models["stllm-conversation"]
    want = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith("vision_model.") and not k.startswith("vision_model.post_layernorm")
    }
    assert {k: tuple(v.shape) for k, v in state.items()} == want


def test_instructblip_keys_fill_qformer_queries_ln_vision_projection(models: dict) -> None:
    entries = json.loads((KEYS / "keys_instructblip_trimmed_fullsize.json").read_text())
    state, _, unknown = _convert(
        entries, "model.stllm_model.", ((r"^model\.stllm_model\.llm_proj\.", "model.stllm_model.llama_proj."),)
    )
    assert unknown == []
    model = models["stllm-qa"]
    want = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(("qformer.", "query_tokens", "vision_model.post_layernorm", "language_projection"))
    }
    assert {k: tuple(v.shape) for k, v in state.items()} == want
