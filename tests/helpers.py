"""Shared test helpers: paths of the test data and the StllmConfig of the original's tiny reference models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stllm.models.configuration import StllmConfig, eva_vit_g_config, qformer_base_config, vicuna_7b_config

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "reference"  # outputs of the original implementation on tiny models (README.md there)
CHECKPOINT_KEYS = DATA / "checkpoint-keys"  # key lists of the released checkpoints (README.md there)
VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"  # real clips, kept outside the repository


def need(path: Path) -> Path:
    """Skip the calling test, saying why, when the real video clips (VIDEOS) beside the repository are absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the folder of real video clips beside the repository is needed for this test)")
    return path


def reference_config(name: str) -> StllmConfig:
    """The original's tiny `qa` / `conversation` models (tests/data/reference/README.md) as a StllmConfig."""
    ref = json.loads((REFERENCE / f"config_{name}.json").read_text())
    flags, ve = ref["stllm_model_flags"], ref["visual_encoder"]
    llama, bert = ref["llama_config"], ref["qformer_bert_config"]
    residual = ref.get("residual") or {}
    return StllmConfig(
        vision_config=eva_vit_g_config(
            hidden_size=ve["embed_dim"],
            intermediate_size=ve["mlp_hidden"],
            num_hidden_layers=ve["depth"],
            num_attention_heads=ve["num_heads"],
            image_size=ve["image_size"][0],
            patch_size=ve["patch_size"],
        ),
        qformer_config=qformer_base_config(
            vocab_size=bert["vocab_size"],
            hidden_size=bert["hidden_size"],
            num_hidden_layers=bert["num_hidden_layers"],
            num_attention_heads=bert["num_attention_heads"],
            intermediate_size=bert["intermediate_size"],
            encoder_hidden_size=bert["encoder_width"],
        ),
        text_config=vicuna_7b_config(
            vocab_size=llama["vocab_size"],
            hidden_size=llama["hidden_size"],
            intermediate_size=llama["intermediate_size"],
            num_hidden_layers=llama["num_hidden_layers"],
            num_attention_heads=llama["num_attention_heads"],
            num_key_value_heads=llama["num_key_value_heads"],
            pad_token_id=ref["llama_tokenizer"]["pad_token_id"],
        ),
        num_query_tokens=ref["qformer"]["num_query_token"],
        video_input=flags["video_input"],
        residual_size=residual.get("residual_size", 16),
        residual_hidden_size=16,
        use_mask=flags["use_mask"],
        mvm_decode=flags["mvm_decode"],
        btadapter=flags["vit_model"] == "eva_btadapter_g",
        btadapter_depth=ve.get("btadapter_depth") or 3,
        qformer_text_input=flags["qformer_text_input"],
    )
