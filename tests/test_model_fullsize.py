"""Full-size presets on the meta device: the released checkpoints' parameters, shapes and trainable set."""

from __future__ import annotations

import json

import pytest
import torch

from stllm.checkpoints.keymap import check_state_dict_fits, convert_original_state_dict, map_original_key
from stllm.models.configuration import preset_config
from stllm.models.modeling import StllmForConditionalGeneration
from tests.helpers import CHECKPOINT_KEYS

CASES = [
    ("stllm-qa", "keys_qa_fullsize.json"),
    ("stllm-conversation", "keys_conversation_fullsize.json"),
    ("stllm-qa", "keys_qa_fullsize_transformers4.28.json"),
    ("stllm-conversation", "keys_conversation_fullsize_transformers4.28.json"),
]


@pytest.mark.parametrize("preset,keys_file", CASES)
def test_released_checkpoint_fits_preset_with_same_trainable_set(preset, keys_file):
    entries = json.loads((CHECKPOINT_KEYS / keys_file).read_text())
    with torch.device("meta"):
        model = StllmForConditionalGeneration(preset_config(preset))
    source = {name: torch.empty(shape, device="meta") for name, shape, *_ in entries}
    result = convert_original_state_dict(source)
    check_state_dict_fits(result.state_dict, model, keys_file, result.pending)  # every key, every shape, both ways
    ours = dict(model.named_parameters())
    for name, _, _, requires_grad in entries:  # docs/original.md §1.11: the recipe trains what the original trained
        mapped = map_original_key(name)
        if mapped is not None and mapped.target in ours:
            assert ours[mapped.target].requires_grad == requires_grad, name


def test_full_size_parameter_counts():
    with torch.device("meta"):
        qa = StllmForConditionalGeneration(preset_config("stllm-qa"))
    total = sum(p.numel() for p in qa.parameters())
    llm = sum(p.numel() for p in qa.language_model.parameters())
    assert llm == 32001 * 4096 * 2 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert total == 8_035_608_704
