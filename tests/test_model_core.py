"""The model's ST-LLM behaviour on tiny configurations: modes, masking + MVM formulas, freezing, generation, I/O."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from stllm.models.configuration import preset_config
from stllm.models.masking import mvm_loss, sample_dropped_tokens, sample_mask_ratio
from stllm.models.modeling import StllmForConditionalGeneration, local_frame_indices

T = 4  # frames


def make_model(seed: int = 0, **overrides) -> StllmForConditionalGeneration:
    torch.manual_seed(seed)
    return StllmForConditionalGeneration(preset_config("tiny", **overrides))


def make_batch(model: StllmForConditionalGeneration, frames: int = T, seed: int = 1) -> dict[str, torch.Tensor]:
    """Two samples in the InstructBLIP layout: [video][bos][prompt][answer][pad], answers labelled."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    n_video = c.num_video_tokens(frames)
    pad = c.text_config.pad_token_id
    prompt = [[2, 10, 11, 12, 13], [2, 14, 15]]
    answer = [[20, 21, 22, 2], [23, 24, 25, 26, 27, 2]]
    rows, labels = [], []
    for p, a in zip(prompt, answer):
        rows.append([c.video_token_id] * n_video + p + a)
        labels.append([-100] * (n_video + len(p)) + a)
    n = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    s = c.vision_config.image_size
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": lab,
        "pixel_values": torch.randn(2, frames, 3, s, s, generator=g),
        "qformer_input_ids": torch.tensor([[2, 30, 31, 3], [2, 32, 3, 0]]),
        "qformer_attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }


# ------------------------------------------------------------------------------------------------ training steps
@pytest.mark.parametrize(
    "video_input,use_mask,btadapter", list(itertools.product(["all", "mean", "residual"], [False, True], [False, True]))
)
def test_train_step_finite_with_gradients_only_where_spec_says(video_input, use_mask, btadapter):
    model = make_model(video_input=video_input, use_mask=use_mask, btadapter=btadapter)
    model.train()
    out = model(**make_batch(model))
    assert torch.isfinite(out.loss)
    if use_mask:
        assert out.mvm_loss is not None and torch.isfinite(out.mvm_loss)
        assert torch.allclose(out.loss, out.lm_loss + out.mvm_loss)
    else:
        assert out.mvm_loss is None
    out.loss.backward()
    trainable_prefixes = ("language_projection.", "language_model.")
    trainable_prefixes += ("btadapter.",) if btadapter else ()
    trainable_prefixes += ("global_adapter.",) if video_input == "residual" else ()
    trainable_prefixes += ("mvm_decoder.",) if use_mask else ()
    for name, p in model.named_parameters():
        if name.startswith(("vision_model.", "qformer.", "query_tokens")):  # docs/original.md §1.11: always frozen
            assert not p.requires_grad and p.grad is None, name
        elif name.startswith(trainable_prefixes):
            assert p.requires_grad, name
            if name.startswith("language_model.") and "embed_tokens" not in name:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("language_projection.weight",):
        assert model.get_parameter(name).grad.abs().sum() > 0
    if btadapter:  # temporal_fc starts at zero: its own gradient is non-zero, the attention behind it gets none
        assert model.btadapter.temporal[0].temporal_fc.weight.grad.abs().sum() > 0
        assert model.btadapter.spatial[-1].layer.mlp.fc2.weight.grad.abs().sum() > 0


def test_mvm_target_is_computed_without_gradient(monkeypatch):
    model = make_model(use_mask=True)
    model.train()
    grad_modes = []
    original = model._run_llm

    def spy(embeds, mask):
        grad_modes.append(torch.is_grad_enabled())
        return original(embeds, mask)

    monkeypatch.setattr(model, "_run_llm", spy)
    model(**make_batch(model))
    assert grad_modes == [True, False]  # masked pass with gradient, full pass without (docs/original.md §2.2 step 4)


def test_masked_forward_matches_hand_built_original_sequence():
    """docs/original.md §2.1-2.2 rebuilt by hand: drop tokens, concatenate [kept video][prompt][answer][pad],
    2 - 2cos."""
    model = make_model(use_mask=True)
    model.eval()  # dropout off; masking forced by dropped_tokens
    batch = make_batch(model)
    n_video = model.config.num_video_tokens(T)
    dropped = sample_dropped_tokens(2, n_video, 0.5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(**batch, dropped_tokens=dropped)
        video = model.get_video_features(
            batch["pixel_values"], batch["qformer_input_ids"], batch["qformer_attention_mask"]
        )  # (B, L, D)
        embed = model.get_input_embeddings()
        seqs, masks, labels = [], [], []
        for b in range(2):
            ids = batch["input_ids"][b, n_video:]
            kept = video[b][~dropped[b]]  # (L_keep, D), original order
            seqs.append(torch.cat([kept, embed(ids)]))
            masks.append(torch.cat([torch.ones(len(kept), dtype=torch.long), batch["attention_mask"][b, n_video:]]))
            labels.append(torch.cat([torch.full((len(kept),), -100), batch["labels"][b, n_video:]]))
        seq, mask, lab = torch.stack(seqs), torch.stack(masks), torch.stack(labels)
        llm = model.language_model
        h_masked = llm.model(inputs_embeds=seq, attention_mask=mask).last_hidden_state
        logits = llm.lm_head(h_masked)
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1))
        n_keep = int((~dropped[0]).sum())
        pred = model.mvm_decoder(h_masked[:, :n_keep])  # InstructBLIP base: video tokens start at 0
        h_full = llm.model(
            inputs_embeds=model.merge_video_tokens(batch["input_ids"], video), attention_mask=batch["attention_mask"]
        ).last_hidden_state
        target = torch.stack([h_full[b, :n_video][~dropped[b]] for b in range(2)])
        p = pred / pred.norm(dim=-1, keepdim=True)
        t = target / target.norm(dim=-1, keepdim=True)
        mvm = (2 - 2 * (p * t).sum(-1)).mean()
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    assert abs(out.lm_loss.item() - ce.item()) < 1e-5
    assert abs(out.mvm_loss.item() - mvm.item()) < 1e-5
    assert abs(out.loss.item() - (ce + mvm).item()) < 1e-5
    assert abs(out.kept_ratio.item() - n_keep / n_video) < 1e-6


def test_legacy_mvm_visual_start_equals_real_positions_when_video_is_first():
    model = make_model(use_mask=True)
    model.eval()
    batch = make_batch(model)
    dropped = sample_dropped_tokens(2, model.config.num_video_tokens(T), 0.4, torch.Generator().manual_seed(5))
    with torch.no_grad():
        fixed = model(**batch, dropped_tokens=dropped).mvm_loss
        model.config.mvm_visual_start = (
            0  # docs/faithfulness.md Q3: the original's hard-coded slice start (0 with text input)
        )
        legacy = model(**batch, dropped_tokens=dropped).mvm_loss
        model.config.mvm_visual_start = 3  # a wrong offset compares misaligned tokens: a different loss
        shifted = model(**batch, dropped_tokens=dropped).mvm_loss
    assert abs(fixed.item() - legacy.item()) < 1e-7
    assert abs(fixed.item() - shifted.item()) > 1e-4


def test_mask_ratio_distribution_and_equal_counts():
    rng = np.random.default_rng(0)
    ratios = np.array([sample_mask_ratio(0.5, 0.1, 0.1, 0.7, rng) for _ in range(20000)])
    assert ratios.min() >= 0.1 and ratios.max() <= 0.7
    assert abs(ratios.mean() - 0.5) < 0.005 and abs(ratios.std() - 0.1) < 0.005
    clipped = np.array([sample_mask_ratio(0.5, 1.0, 0.1, 0.7, rng) for _ in range(2000)])
    assert (clipped == 0.1).any() and (clipped == 0.7).any()
    dropped = sample_dropped_tokens(3, 512, 0.37)
    assert dropped.sum(1).tolist() == [int(0.37 * 512)] * 3
    assert not torch.equal(dropped[0], dropped[1])  # positions differ per sample


def test_mask_sampled_in_training_gives_spec_token_counts():
    model = make_model(use_mask=True)
    model.train()
    model.seed_masking(0)
    n_video = model.config.num_video_tokens(T)
    kept = [model(**make_batch(model)).kept_ratio.item() for _ in range(6)]
    for k in kept:
        assert 1 - 0.7 - 1e-6 <= k <= 1 - 0.1 + 1e-6
        assert abs(k * n_video - round(k * n_video)) < 1e-4


def test_mvm_loss_formula():
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert abs(mvm_loss(a, b).item() - (2 - 2 * cos).mean().item()) < 1e-6
    assert mvm_loss(a, 3 * a).item() < 1e-6  # scale-invariant, 0 for parallel vectors


def test_dropped_tokens_validation():
    model = make_model(use_mask=True)
    batch = make_batch(model)
    n = model.config.num_video_tokens(T)
    bad = torch.zeros(2, n, dtype=torch.bool)
    bad[0, :3] = True
    bad[1, :2] = True
    with pytest.raises(ValueError, match="same number"):
        model(**batch, dropped_tokens=bad)
    with pytest.raises(ValueError, match="shape"):
        model(**batch, dropped_tokens=torch.zeros(2, n + 1, dtype=torch.bool))


def test_images_are_never_masked():
    model = make_model(use_mask=True)
    model.train()
    out = model(**make_batch(model, frames=1))
    assert out.mvm_loss is None and out.kept_ratio.item() == 1.0


# --------------------------------------------------------------------------------------------- global-local input
def test_local_frame_indices_spec_1_7():
    assert local_frame_indices(64, 16) == list(range(2, 64, 4))
    assert local_frame_indices(16, 16) == list(range(16))
    with pytest.raises(ValueError, match="at least"):
        local_frame_indices(8, 16)


def test_global_local_aggregation_formula_and_zero_init():
    model = make_model(video_input="residual", residual_size=2)
    tokens = torch.randn(2, 6, 4, 64)  # (B, T, Q, D)
    idx = local_frame_indices(6, 2)
    with torch.no_grad():
        at_init = model.aggregate_frames(tokens)
        assert torch.equal(at_init, tokens[:, idx].reshape(2, -1, 64))  # zero up_proj: adds exactly 0
        torch.nn.init.normal_(model.global_adapter.up_proj.weight)
        out = model.aggregate_frames(tokens)
        glob = tokens.mean(1, keepdim=True)
        ad = model.global_adapter
        want = tokens[:, idx] + ad.up_proj(torch.relu(ad.down_proj(glob)))
    torch.testing.assert_close(out, want.reshape(2, -1, 64))
    assert model.aggregate_frames(tokens, "mean").shape == (2, 4, 64)
    assert model.aggregate_frames(tokens, "all").shape == (2, 24, 64)


# --------------------------------------------------------------------------------------------------- freezing
def test_qformer_dropout_follows_train_only_with_btadapter():
    with_bt = make_model(btadapter=True)
    with_bt.train()
    assert with_bt.qformer.training  # docs/faithfulness.md Q2 [KEEP]
    plain = make_model(btadapter=False)
    plain.train()
    assert not plain.qformer.training
    never = make_model(btadapter=True, qformer_dropout_in_train="never")
    never.train()
    assert not never.qformer.training


def test_freeze_llm_flag():
    model = make_model(freeze_llm=True)
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert model.language_projection.weight.requires_grad


def test_lora_trains_only_adapters_and_recipe_modules():
    from stllm.models.lora import apply_lora

    model = apply_lora(make_model(use_mask=True, btadapter=True), r=4)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(**make_batch(model))
    out.loss.backward()
    opt.step()
    # the PEFT wrapper prefixes every name with base_model.model.; recipe modules train as modules_to_save copies
    changed = {
        n.removeprefix("base_model.model.") for n, p in model.named_parameters() if not torch.equal(p, before[n])
    }
    assert any("lora_" in n for n in changed)
    for n in changed:
        assert "lora_" in n or n.startswith(("language_projection.", "btadapter.", "mvm_decoder.")), n
    assert not any(n.startswith("language_model.") and "lora_" not in n for n in changed)


def test_gradient_checkpointing_gives_the_same_loss():
    model = make_model(use_mask=False, btadapter=True)
    model.train()
    model.qformer.eval()
    model.btadapter.eval()  # no drop path, so both runs are deterministic
    batch = make_batch(model)
    plain = model(**batch)
    plain.loss.backward()
    g1 = model.language_projection.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    model.train()
    model.qformer.eval()
    model.btadapter.eval()
    ckpt = model(**batch)
    ckpt.loss.backward()
    assert abs(plain.loss.item() - ckpt.loss.item()) < 1e-6
    torch.testing.assert_close(model.language_projection.weight.grad, g1, atol=1e-6, rtol=1e-5)
