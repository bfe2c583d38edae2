"""`python -m stllm estimate`: parameter counts against the meta-device model, model states against DeepSpeed's
estimators, the acceptance command's recommendation, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from stllm.models.configuration import preset_config
from stllm.models.modeling import StllmForConditionalGeneration
from stllm.train.estimate import Params, activation_bytes, count_params, model_states, plan, preset_for
from tests.faults import assert_user_error, run_cli

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_parameter_counts_match_the_meta_model():
    cfg = preset_config("stllm-qa")
    params = count_params(cfg)
    with torch.device("meta"):
        model = StllmForConditionalGeneration(cfg)
    assert params.total == sum(p.numel() for p in model.parameters()) == 8_035_608_704
    assert params.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) == 6_863_971_712
    assert params.largest_layer == 32001 * 4096  # embed_tokens / lm_head


def test_model_states_are_deepspeeds_estimates_plus_frozen_weights():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p = Params(total=8_000_000_000, trainable=6_000_000_000, largest_layer=131_000_000)
    states = model_states(p, gpus=8)
    _, gpu2 = estimate_zero2_model_states_mem_needs(p.trainable, 8, 1, cpu_offload=False)
    _, gpu3, _ = estimate_zero3_model_states_mem_needs(p.trainable, p.largest_layer, 8, 1, cpu_offload=False)
    assert states["zero2"]["gpu"] == gpu2 + 2 * p.frozen == 2 * 6e9 + 18 * 6e9 / 8 + 2 * 2e9
    assert states["zero3"]["gpu"] == gpu3 + 2 * p.frozen // 8
    assert states["zero3_offload"]["gpu"] == 4 * p.largest_layer
    # all trainable: exactly DeepSpeed's figures
    full = model_states(Params(p.total, p.total, p.largest_layer), gpus=8)
    assert full["zero2"]["gpu"] == estimate_zero2_model_states_mem_needs(p.total, 8, 1, cpu_offload=False)[1]


def test_activation_formula_shape():
    cfg = preset_config("stllm-qa")
    off, on = (activation_bytes(cfg, 16, 320, ckpt) for ckpt in (False, True))
    assert 0 < on < off
    assert activation_bytes(cfg, 16, 640, False) > off  # grows with the sequence


def test_preset_from_recipe_name():
    names = {p.name: preset_for(p) for p in (REPO / "configs" / "train").glob("*.yaml")}
    assert names["stllm_qa_40gb.yaml"] == "stllm-qa"
    assert names["stllm_conversation_minigpt4.yaml"] == "stllm-conversation-minigpt4"
    assert names["tiny.yaml"] == "tiny"


def test_plan_keeps_the_global_batch():
    cfg = preset_config("stllm-qa")
    for choice in plan(cfg, count_params(cfg), gpus=8, gpu_memory_gib=40, global_batch=128, frames=16, text_tokens=320):
        assert choice.micro_batch * choice.accumulation * 8 == 128
        assert choice.gpu_bytes <= 40 * 2**30


def test_acceptance_command_prints_a_recommendation():
    run = run_cli("estimate", REPO / "configs" / "train" / "stllm_qa.yaml", "--gpus", "8", "--gpu-memory", "40")
    assert run.rc == 0, run.stderr[-2000:]
    assert "6,863,971,712 trainable" in run.stdout
    assert "recommendation for 8 x 40 GB, global batch 128:" in run.stdout
    assert "does NOT fit 40 GB" in run.stdout  # the recipe as written: micro-batch 16 (the original's OOM reports)
    assert "NOT CALIBRATED" in run.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (["no_such_recipe.yaml"], ["no_such_recipe.yaml"]),
        (["{tiny}", "--preset", "nope"], ["--preset", "nope"]),
        (["{tiny}", "model.config.no_field=1"], ["model.config.no_field"]),
        (["{qa}", "--gpus", "3"], ["--global-batch", "--gpus 3"]),
    ],
)
def test_bad_input_is_one_line(args, needles):
    subst = {"{tiny}": str(REPO / "configs/train/tiny.yaml"), "{qa}": str(REPO / "configs/train/stllm_qa.yaml")}
    run = run_cli("estimate", *[subst.get(a, a) for a in args], timeout=120)
    assert_user_error(run, *needles)
