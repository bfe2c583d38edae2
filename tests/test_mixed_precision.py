"""Mixed precision on a CPU: the vision autocast path (docs/faithfulness.md Q16) through the device-agnostic switch,
dtypes of every intermediate output, finite losses close to float32; the HF Trainer's bf16 path on the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stllm.models.configuration import preset_config
from stllm.models.modeling import StllmForConditionalGeneration
from stllm.quickstart.toydata import write_drawn_dataset
from stllm.testing import build_tiny_model_dir
from stllm.train import run
from stllm.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
VISION = ("vision_model.encoder.layers.0.mlp", "btadapter.temporal.0.temporal_fc")  # linears inside the autocast
HOOKED = (*VISION, "language_projection", "global_adapter", "mvm_decoder", "language_model.lm_head")


def _model(**overrides) -> StllmForConditionalGeneration:
    # BT-Adapter + global-local input + masking + MVM: every module with a dtype cast on the way
    cfg = preset_config("tiny", btadapter=True, video_input="residual", **overrides)
    torch.manual_seed(0)
    return StllmForConditionalGeneration(cfg).train()


def _inputs(model: StllmForConditionalGeneration, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    n_video = cfg.num_video_tokens(4)
    text = torch.randint(3, 300, (2, 12), generator=g)
    ids = torch.cat([torch.full((2, n_video), cfg.video_token_id), text], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -5:] = ids[:, -5:]
    dropped = torch.zeros(2, n_video, dtype=torch.bool)
    dropped[:, ::2] = True  # half the video tokens: masking and the MVM loss both run
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.randn(2, 4, 3, 28, 28, generator=g).to(dtype),
        "qformer_input_ids": torch.randint(5, 300, (2, 6), generator=g),
        "dropped_tokens": dropped,
    }


def _run(model: StllmForConditionalGeneration, dtype: torch.dtype):
    """One forward + backward -> (output, {module: output dtype})."""
    seen: dict[str, torch.dtype] = {}
    handles = []
    for name in HOOKED:
        module = model.get_submodule(name)

        def hook(_m, _args, out, name=name):
            seen[name] = out.dtype

        handles.append(module.register_forward_hook(hook))
    out = model(**_inputs(model, dtype))
    out.loss.backward()
    for h in handles:
        h.remove()
    return out, seen


def _grads_finite(model: StllmForConditionalGeneration) -> bool:
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return bool(grads) and all(torch.isfinite(g).all() for g in grads)


def test_vision_autocast_is_cuda_only_by_default():
    model = _model(vision_autocast_dtype="bfloat16")
    _, seen = _run(model, torch.float32)
    assert all(seen[name] == torch.float32 for name in VISION)  # Q16: no autocast on a CPU unless asked


def test_cpu_vision_autocast_fp32_weights():
    """fp32 weights, vision path under bf16 autocast: bf16 Q-Former output, cast back at the projection."""
    ref = _model(vision_autocast_dtype=None)
    ref_out, _ = _run(ref, torch.float32)
    model = _model(vision_autocast_dtype="bfloat16")
    model.config.vision_autocast_devices = ["cuda", "cpu"]
    out, seen = _run(model, torch.float32)
    assert all(seen[name] == torch.bfloat16 for name in VISION)  # the switch made autocast act on the CPU
    for name in ("language_projection", "global_adapter", "mvm_decoder", "language_model.lm_head"):
        assert seen[name] == torch.float32, name
    for loss in (out.loss, out.lm_loss, out.mvm_loss):
        assert loss is not None and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert _grads_finite(model)
    print(
        "fp32 weights + bf16 vision autocast:",
        float(abs(out.lm_loss - ref_out.lm_loss) / ref_out.lm_loss),
        float(abs(out.mvm_loss - ref_out.mvm_loss) / ref_out.mvm_loss),
    )
    # measured (this test's print): relative differences 9e-7 (LM loss) and 2.4e-5 (MVM loss)
    assert abs(out.lm_loss - ref_out.lm_loss) / ref_out.lm_loss < 1e-3
    assert abs(out.mvm_loss - ref_out.mvm_loss) / ref_out.mvm_loss < 1e-3


def test_cpu_bf16_weights_with_vision_autocast():
    """bf16 weights (DeepSpeed's bf16 layout) + the vision autocast: bf16 activations, float32 loss upcasts."""
    ref = _model(vision_autocast_dtype=None)
    ref_out, _ = _run(ref, torch.float32)
    model = _model(vision_autocast_dtype="bfloat16").to(torch.bfloat16)
    model.config.vision_autocast_devices = ["cuda", "cpu"]
    out, seen = _run(model, torch.bfloat16)
    assert all(dtype == torch.bfloat16 for dtype in seen.values()), seen
    for loss in (out.loss, out.lm_loss, out.mvm_loss):  # LM loss upcast in CE, MVM loss normalised in float32
        assert loss is not None and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert _grads_finite(model)
    print(
        "bf16 weights + bf16 vision autocast:",
        float(abs(out.lm_loss - ref_out.lm_loss) / ref_out.lm_loss),
        float(abs(out.mvm_loss - ref_out.mvm_loss) / ref_out.mvm_loss),
    )
    # measured (this test's print): relative differences 1.4e-5 (LM loss) and 2.1e-4 (MVM loss)
    assert abs(out.lm_loss - ref_out.lm_loss) / ref_out.lm_loss < 1e-3
    assert abs(out.mvm_loss - ref_out.mvm_loss) / ref_out.mvm_loss < 5e-3


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    write_drawn_dataset(root, num=8)
    return root, build_tiny_model_dir(tmp_path_factory.mktemp("init"), seed=42)


def _trainer_losses(toy: tuple[Path, Path], out: Path, bf16: bool) -> list[float]:
    root, init = toy
    cfg = load_train_config(
        REPO / "configs" / "train" / "tiny.yaml",
        [
            f"model.init_from={init}",
            f"data.data_root={root}",
            f"train.output_dir={out}",
            "train.per_device_train_batch_size=2",
            "train.max_steps=4",
            "train.logging_steps=1",
            "train.save_strategy=no",
            "train.disable_tqdm=true",
            "train.use_cpu=true",
            f"train.bf16={str(bf16).lower()}",
        ],
    )
    run.train(cfg)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def test_trainer_bf16_path_matches_fp32(toy, tmp_path):
    """The HF Trainer's bf16 path (CPU autocast): finite losses within 1e-3 of float32 over 4 steps (measured:
    at most 4.1e-5 relative)."""
    fp32 = _trainer_losses(toy, tmp_path / "fp32", bf16=False)
    bf16 = _trainer_losses(toy, tmp_path / "bf16", bf16=True)
    assert len(fp32) == len(bf16) == 4
    assert all(torch.isfinite(torch.tensor(bf16)))
    rel = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    print("relative loss differences bf16 vs fp32:", rel)
    assert max(rel) < 1e-3, rel
