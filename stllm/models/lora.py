"""A model -> the same model with PEFT LoRA adapters on the LLM's attention (SPEC 1.6), recipe trainables kept.

The original's LoRA: r, alpha 32, dropout 0.05, target q_proj/v_proj of the LLM, bias none; with LoRA the LLM is
frozen while the vision-side modules the recipe trains (BT-Adapter, projection, global-local adapter, MVM head)
keep training.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


def apply_lora(model: nn.Module, r: int, alpha: int = 32, dropout: float = 0.05,
               target_modules: Sequence[str] = ("q_proj", "v_proj")) -> nn.Module:
    """Wrap `model.language_model` with LoRA in place; returns `model`. r must be > 0."""
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise ValueError(f"LoRA rank must be positive, got {r}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                     target_modules=list(target_modules), task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, cfg)
    model.config.freeze_llm = True
    model.apply_recipe_freezing()  # LLM frozen, vision-side trainables on
    for name, p in model.language_model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA weights into the LLM (for saving a plain model)."""
    model.language_model = model.language_model.merge_and_unload()
    return model
