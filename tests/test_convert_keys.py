"""Original key lists (tests/data/checkpoint-keys) <-> our full-size presets on the meta device.

Forwards: every released key maps and the result fits the model. Backwards: `original_key_list` rebuilds the released
lists from our model alone (what `python -m stllm bench convert` writes).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from stllm.checkpoints.bench import build_synthetic
from stllm.checkpoints.convert import main as convert_main
from stllm.checkpoints.convert import meta_model
from stllm.checkpoints.keymap import check_state_dict_fits, convert_original_state_dict, original_key_list
from stllm.checkpoints.writer import parse_size
from stllm.models.configuration import preset_config
from stllm.models.modeling import StllmForConditionalGeneration
from tests.helpers import CHECKPOINT_KEYS as KEYS
from tests.helpers import REFERENCE, reference_config


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


# ------------------------------------------------------------------------------- our model -> original key list
RELEASED = [("stllm-qa", "qa"), ("stllm-conversation", "conversation")]


def _released(name: str) -> list:
    return [(n, tuple(shape), dtype) for n, shape, dtype, *_ in json.loads((KEYS / name).read_text())]


@pytest.mark.parametrize("preset,recipe", RELEASED)
def test_generated_key_list_is_the_released_list(preset: str, recipe: str) -> None:
    """Names, shapes, dtypes and order of the released checkpoint, from our model's keys run backwards."""
    generated = original_key_list(preset_config(preset))
    assert generated == _released(f"keys_{recipe}_fullsize.json")


@pytest.mark.parametrize("preset,recipe", RELEASED)
def test_transformers_4_28_list_is_generated_plus_rotary_buffers(preset: str, recipe: str) -> None:
    config = preset_config(preset)
    text = config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    inv_freq = [
        (f"model.layers.{i}.self_attn.rotary_emb.inv_freq", (head_dim // 2,), "float32")
        for i in range(text.num_hidden_layers)
    ]
    released = _released(f"keys_{recipe}_fullsize_transformers4.28.json")
    # the same entries; the order differs inside the MLP only (4.28's LlamaMLP registered gate, down, up)
    assert sorted(original_key_list(config) + inv_freq) == sorted(released)
    assert [e[0] for e in released][5:9] == [
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    ]


@pytest.mark.parametrize("name", ["qa", "conversation"])
def test_generated_key_list_of_the_tiny_reference_models(name: str) -> None:
    """A config that is no preset: the tiny models' weight files, plus the buffer a training forward registers."""
    from safetensors import safe_open

    with safe_open(REFERENCE / f"weights_{name}.safetensors", "pt") as f:
        names = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    generated = {n: shape for n, shape, _ in original_key_list(reference_config(name))}
    if name == "conversation":  # residual_index: stored after the first global-local forward (docs/original.md §1.7)
        assert generated.pop("model.stllm_model.residual_index") == (4,)
    assert generated == names


@pytest.mark.parametrize("preset", ["stllm-qa", "stllm-conversation", "tiny"])
def test_generated_key_list_converts_back_onto_the_model(models: dict, preset: str) -> None:
    entries = original_key_list(preset_config(preset))
    assert len({n for n, *_ in entries}) == len(entries)
    state, skipped, unknown = _convert([[n, list(shape)] for n, shape, _ in entries])
    assert unknown == []
    model = models[preset] if preset in models else meta_model(preset_config(preset))
    check_state_dict_fits(state, model, preset)
    assert "model.stllm_model.embed_tokens.weight" in skipped


def test_bench_synthetic_checkpoint_from_the_generated_list_converts(tmp_path) -> None:
    """What `python -m stllm bench convert` writes by default, at the tiny size: HF-Trainer shards that convert."""
    entries = [list(e) for e in original_key_list(reference_config("qa"))]
    build_synthetic(entries, tmp_path / "src", torch.float32, parse_size("1MB"))
    assert len(list((tmp_path / "src").glob("pytorch_model-*.bin"))) > 1
    reference_config("qa").to_json_file(str(tmp_path / "config.json"))
    args = ["--from-stllm", str(tmp_path / "src"), "--recipe", "qa", "--config", str(tmp_path / "config.json")]
    assert convert_main(args + ["--out", str(tmp_path / "out"), "--dtype", "float32", "--no-tokenizer"]) == 0
    model = StllmForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert model.language_model.model.embed_tokens.weight.shape == (513, 64)
