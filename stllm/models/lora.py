"""A model -> the same model with PEFT LoRA adapters on the LLM's projections (docs/original.md §1.6).

The original's settings are the defaults of `stllm.train.config.LoraSection` (rank r, alpha 32, dropout 0.05,
q_proj and v_proj, no bias); a recipe may name more projections. The LLM's other weights are frozen by PEFT,
while the vision-side modules the recipe trains (BT-Adapter, projection, global-local adapter, MVM head) are
trained in full through `modules_to_save`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> Any:
    """Wrap `model` with LoRA on `language_model.*.{target_modules}`; returns the PEFT model. r must be > 0."""
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    full = sorted(
        {
            name.split(".")[0]
            for name, p in model.named_parameters()
            if p.requires_grad and not name.startswith("language_model.")
        }
    )
    targets = "|".join(re.escape(t) for t in target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias="none",
        target_modules=rf"language_model\..*\.({targets})",
        modules_to_save=full or None,
    )
    return get_peft_model(model, config)
