"""(pixel_values, input_ids with video placeholders) -> LM loss + MVM loss, logits, or generated ids.

Data flow (docs/original.md §1.1): frames (B,T,3,S,S) -> EVA [+ BT-Adapter] -> ln_vision (B*T,1+P,Dv) -> Q-Former with
instruction text (B*T,Q,Dq) -> projection (B,T,Q,D) -> video-input mode (B,L,D) -> scattered into the
placeholder positions of the text embeddings -> Vicuna. In training with `use_mask`, a random subset of the
L video tokens is dropped and a second, gradient-free pass over the full sequence provides the MVM target.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import InstructBlipQFormerModel, InstructBlipVisionModel, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.utils.generic import ModelOutput

from stllm.models.configuration import StllmConfig
from stllm.models.masking import (
    check_dropped_tokens,
    compact,
    mvm_loss,
    sample_dropped_tokens,
    sample_mask_ratio,
    sample_original_mask,
    sequence_keep_mask,
)
from stllm.models.vision import BTAdapter, encode_frames, init_tagged_layer, tag_init

logger = logging.getLogger(__name__)


def local_frame_indices(num_frames: int, residual_size: int) -> list[int]:
    """docs/original.md §1.7: segment midpoints, idx_i = int(seg/2 + round(seg*i)) with seg = T / residual_size.

    T=64, R=16 -> 2, 6, ..., 62; T=16, R=16 -> 0..15. Computed from T at every call (docs/faithfulness.md Q4 [FIX]: the
    original
    cached the first call's indices in a buffer).
    """
    seg = num_frames / residual_size
    idx = [int(seg / 2 + round(seg * i)) for i in range(residual_size)]
    if idx[-1] >= num_frames:
        raise ValueError(
            f"the global-local input needs at least residual_size={residual_size} frames "
            f"to pick local frames from, got {num_frames}"
        )
    return idx


class GlobalLocalAdapter(nn.Module):
    """docs/original.md §1.7: up(ReLU(down(global mean))), zero-initialised `up_proj` so it adds exactly 0 at the
    start."""

    def __init__(self, hidden_size: int, bottleneck: int) -> None:
        super().__init__()
        self.down_proj = nn.Linear(hidden_size, bottleneck)
        self.act = nn.ReLU()
        self.up_proj = nn.Linear(bottleneck, hidden_size)
        tag_init(self.down_proj, "torch_zero_bias")  # kaiming-uniform(a=sqrt 5) weight, zero bias
        tag_init(self.up_proj, "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(self.act(self.down_proj(x)))


class MvmDecoder(nn.Module):
    """docs/original.md §1.8: Linear(D, D) + LayerNorm(D, eps 1e-5) applied to the masked run's visible video tokens."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-5)
        tag_init(self.head, "torch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(x))


@dataclass
class StllmOutput(ModelOutput):
    """loss = lm_loss + mvm_loss_weight * mvm_loss; logits of the (masked, when masking) sequence."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mvm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    kept_ratio: torch.Tensor | None = None


class StllmPreTrainedModel(PreTrainedModel):
    config_class = StllmConfig
    config: StllmConfig
    base_model_prefix = "stllm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules = [
        "InstructBlipEncoderLayer",
        "InstructBlipQFormerLayer",
        "LlamaDecoderLayer",
        "BTAdapterSpatial",
        "BTAdapterTemporal",
    ]
    _keep_in_fp32_modules: list[str] = []

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_tagged_layer(module)
        if isinstance(module, StllmForConditionalGeneration):
            init.normal_(module.query_tokens, mean=0.0, std=0.02)  # docs/original.md §1.4: N(0, 0.02)


class StllmForConditionalGeneration(StllmPreTrainedModel):
    """ST-LLM: all spatial-temporal video tokens into a LLaMA LLM (Liu et al. 2024, arXiv 2404.00308).

    Sub-modules follow transformers' InstructBlipVideo names (`vision_model`, `qformer`, `query_tokens`,
    `language_projection`, `language_model`), plus `btadapter`, `global_adapter` and `mvm_decoder`.
    """

    def __init__(self, config: StllmConfig) -> None:
        super().__init__(config)
        vc, qc, tc = config.vision_config, config.qformer_config, config.text_config
        self.vision_model = InstructBlipVisionModel(vc)
        # LAVIS ln_vision uses eps 1e-5 while the EVA blocks use 1e-6 (docs/design.md decision 1)
        self.vision_model.post_layernorm = nn.LayerNorm(vc.hidden_size, eps=config.vision_layernorm_eps)
        self.btadapter = (
            BTAdapter(vc, config.btadapter_depth, config.btadapter_max_frames, config.btadapter_drop_path_rate)
            if config.btadapter
            else None
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qc.hidden_size))
        self.qformer = InstructBlipQFormerModel(qc)
        self.language_projection = nn.Linear(qc.hidden_size, tc.hidden_size)
        tag_init(self.language_projection, "torch")  # docs/original.md §1.5: PyTorch default
        self.global_adapter = (
            GlobalLocalAdapter(tc.hidden_size, config.residual_hidden_size)
            if config.video_input == "residual"
            else None
        )
        self.mvm_decoder = MvmDecoder(tc.hidden_size) if config.mvm_decode else None
        self.language_model = LlamaForCausalLM(tc)
        self._mask_rng = np.random.default_rng()
        self.post_init()
        self.apply_recipe_freezing()

    # ----------------------------------------------------------------------------------------------- plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        head = self.language_model.get_output_embeddings()
        if head is None:
            raise ValueError("the language model has no output embeddings (lm_head)")
        return head

    def seed_masking(self, seed: int) -> None:
        """Seed our mask stream (config.mask_rng == "stllm") used when no `dropped_tokens` are passed.

        With mask_rng "original" the masks come from NumPy's global state instead (seed it with np.random.seed);
        this seed is then unused (docs/faithfulness.md, "Random streams and decoding")."""
        self._mask_rng = np.random.default_rng(seed)

    def apply_recipe_freezing(self) -> None:
        """docs/original.md §1.11: EVA (not the BT-Adapter), ln_vision, Q-Former and queries frozen; the rest per
        flags."""
        c = self.config
        for p in self.vision_model.parameters():
            p.requires_grad_(not c.freeze_vision)
        for p in list(self.qformer.parameters()) + [self.query_tokens]:
            p.requires_grad_(not c.freeze_qformer)
        for p in self.language_model.parameters():
            p.requires_grad_(not c.freeze_llm)
        for module in (self.btadapter, self.language_projection, self.global_adapter, self.mvm_decoder):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(True)

    def train(self, mode: bool = True) -> StllmForConditionalGeneration:
        super().train(mode)
        # docs/faithfulness.md Q2 [KEEP]: the frozen Q-Former stays in eval mode with plain EVA only; with the
        # BT-Adapter tower
        # its dropout follows model.train() (switch: qformer_dropout_in_train="never").
        c = self.config
        if mode and c.freeze_qformer and (not c.btadapter or c.qformer_dropout_in_train == "never"):
            self.qformer.eval()
        return self

    # ------------------------------------------------------------------------------------------------- vision
    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        s = self.config.frame_size()
        if pixel_values.ndim != 5 or pixel_values.shape[2] != 3 or tuple(pixel_values.shape[3:]) != (s, s):
            raise ValueError(
                f"pixel_values must be (batch, frames, 3, {s}, {s}) float frames, got shape {tuple(pixel_values.shape)}"
            )
        t = pixel_values.shape[1]
        if self.btadapter is not None and t > self.config.btadapter_max_frames:
            raise ValueError(
                f"{t} frames given but the BT-Adapter's temporal position table has "
                f"{self.config.btadapter_max_frames} rows (docs/original.md §1.3); sample at most that many frames"
            )

    def _vision_autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """docs/faithfulness.md Q16 [KEEP]: the vision path under `vision_autocast_dtype` autocast, on CUDA only.

        `config.vision_autocast_devices` (default ["cuda"]) names the device types where it applies;
        ["cuda", "cpu"] with "bfloat16" runs the same dtype plumbing on a CPU (tests/test_mixed_precision.py).
        """
        dtype = self.config.vision_autocast_dtype
        devices = self.config.vision_autocast_devices
        if device.type in devices and dtype:
            return torch.autocast(device.type, dtype=getattr(torch, dtype))
        return contextlib.nullcontext()

    def get_frame_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pixel_values (B, T, 3, S, S) -> projected Q-Former tokens (B, T, Q, D) (docs/original.md §1.2-1.5)."""
        self._check_pixels(pixel_values)
        b, t = pixel_values.shape[:2]
        frames = pixel_values.flatten(0, 1)  # (B*T, 3, S, S)
        with self._vision_autocast(frames.device):
            feats, _ = encode_frames(self.vision_model, self.btadapter, frames, t)  # (B*T, 1+P, Dv)
            queries = self.query_tokens.expand(b * t, -1, -1)  # (B*T, Q, Dq)
            q = queries.shape[1]
            if self.config.qformer_text_input and qformer_input_ids is not None:
                if qformer_input_ids.shape[0] != b:
                    raise ValueError(f"qformer_input_ids has batch {qformer_input_ids.shape[0]}, pixel_values {b}")
                ids = qformer_input_ids.repeat_interleave(t, dim=0)  # (B*T, Lq): each sample's text for its frames
                text_mask = (
                    torch.ones_like(ids)
                    if qformer_attention_mask is None
                    else qformer_attention_mask.repeat_interleave(t, dim=0)
                )
                mask = torch.cat([torch.ones(b * t, q, dtype=text_mask.dtype, device=ids.device), text_mask], dim=1)
                out = self.qformer(
                    input_ids=ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=feats
                )
            else:
                out = self.qformer(input_ids=None, query_embeds=queries, encoder_hidden_states=feats)
            query_out = out.last_hidden_state[:, :q]  # (B*T, Q, Dq)
        tokens = self.language_projection(query_out.to(self.language_projection.weight.dtype))  # (B*T, Q, D)
        return tokens.reshape(b, t, q, -1)  # (B, T, Q, D)

    def aggregate_frames(self, tokens: torch.Tensor, video_input: str | None = None) -> torch.Tensor:
        """(B, T, Q, D) -> (B, L, D) by the video-input mode (docs/original.md §1.7); a single frame is an image (L =
        Q)."""
        b, t, q, d = tokens.shape
        mode = video_input or self.config.video_input
        if t == 1 or mode == "all":
            return tokens.reshape(b, t * q, d)  # frame-major: frame 0's Q tokens, then frame 1's, ...
        if mode == "mean":
            return tokens.mean(dim=1)  # (B, Q, D)
        if self.global_adapter is None:
            raise ValueError("video_input 'residual' needs the global-local adapter, which this model lacks")
        local = tokens[:, local_frame_indices(t, self.config.residual_size)]  # (B, R, Q, D)
        glob = tokens.mean(dim=1, keepdim=True).to(self.global_adapter.down_proj.weight.dtype)  # (B, 1, Q, D)
        out = local + self.global_adapter(glob)  # the same global vector added to every local frame
        return out.reshape(b, -1, d)  # (B, R*Q, D)

    def get_video_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        video_input: str | None = None,
    ) -> torch.Tensor:
        """pixel_values (B, T, 3, S, S) -> video tokens (B, L, D) ready to be scattered into the LLM input."""
        tokens = self.get_frame_features(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.aggregate_frames(tokens, video_input)

    # ----------------------------------------------------------------------------------------------- sequence
    def merge_video_tokens(self, input_ids: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
        """Embed `input_ids` (B, N) and scatter `video_embeds` (B, L, D) into the L placeholder positions."""
        if video_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"batch size mismatch: input_ids has {input_ids.shape[0]} rows, the video {video_embeds.shape[0]}"
            )
        video_pos = input_ids == self.config.video_token_id  # (B, N)
        counts = video_pos.sum(dim=1)
        n_video = video_embeds.shape[1]
        if not bool((counts == n_video).all()):
            raise ValueError(
                f"every row of input_ids must hold exactly {n_video} video placeholder ids "
                f"(id {self.config.video_token_id}) for this video, found {counts.tolist()}; build the "
                f"prompt with the processor for the same number of frames and video_input mode"
            )
        embeds = self.get_input_embeddings()(input_ids.masked_fill(video_pos, 0))  # (B, N, D)
        return embeds.masked_scatter(video_pos.unsqueeze(-1), video_embeds.to(embeds.dtype))

    def _video_tokens(
        self,
        caller: str,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        qformer_input_ids: torch.Tensor | None,
        qformer_attention_mask: torch.Tensor | None,
        video_embeds: torch.Tensor | None,
        video_input: str | None = None,
    ) -> torch.Tensor:
        """Precomputed video tokens (B, L, D), or computed from checked pixel_values (B, T, 3, S, S)."""
        if video_embeds is not None:
            return video_embeds
        if pixel_values is None:
            raise ValueError(f"{caller} needs pixel_values (B, T, 3, S, S) or precomputed video_embeds (B, L, D)")
        self._check_pixels(pixel_values)
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"batch size mismatch: input_ids has {input_ids.shape[0]} rows, pixel_values {pixel_values.shape[0]}"
            )
        return self.get_video_features(pixel_values, qformer_input_ids, qformer_attention_mask, video_input)

    def _run_llm(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """-> final hidden states after the LLM's last RMSNorm (B, N, D), no cache (training path)."""
        # get_decoder() also reaches the LlamaModel through a PEFT wrapper
        return self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state

    @staticmethod
    def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """docs/original.md §3.3 step 6: shift-by-one CE, mean over all non-ignored tokens of the batch (float32)."""
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        dropped_tokens: torch.Tensor | None = None,
        use_mask: bool | None = None,
        **kwargs,
    ) -> StllmOutput:
        """Training/scoring forward.

        input_ids (B, N) hold exactly L placeholder ids per row (L = config.num_video_tokens(T)); labels (B, N)
        are -100 outside the answer. Masking runs when `use_mask` (default: config.use_mask and training) and
        the clip has more than one frame; `dropped_tokens` (B, L) bool fixes which video tokens are dropped
        (same count per row), otherwise a ratio r ~ clip(N(0.5, 0.1), 0.1, 0.7) is drawn for the batch.
        """
        video_embeds = self._video_tokens(
            "forward", input_ids, pixel_values, qformer_input_ids, qformer_attention_mask, video_embeds
        )
        is_video = pixel_values is None or pixel_values.shape[1] > 1
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.merge_video_tokens(input_ids, video_embeds)  # (B, N, D)
        masking = (self.config.use_mask and self.training) if use_mask is None else use_mask
        masking = (masking or dropped_tokens is not None) and is_video
        if not masking:
            logits = self.get_output_embeddings()(self._run_llm(inputs_embeds, attention_mask))
            lm_loss = self._lm_loss(logits, labels) if labels is not None else None
            return StllmOutput(
                loss=lm_loss, lm_loss=lm_loss, logits=logits, kept_ratio=torch.ones((), device=logits.device)
            )

        b, n_video = video_embeds.shape[:2]
        if dropped_tokens is None:
            c = self.config
            if c.mask_rng == "original":  # NumPy's global state, the original's two calls in order
                dropped_tokens = sample_original_mask(
                    b, n_video, c.mask_ratio_mean, c.mask_ratio_std, c.mask_ratio_min, c.mask_ratio_max
                ).to(input_ids.device)
            else:  # our own stream: seeded per step by the trainer, so resumed runs draw the same masks
                ratio = sample_mask_ratio(
                    c.mask_ratio_mean, c.mask_ratio_std, c.mask_ratio_min, c.mask_ratio_max, self._mask_rng
                )
                seed = int(self._mask_rng.integers(2**62))
                dropped_tokens = sample_dropped_tokens(
                    b, n_video, ratio, torch.Generator().manual_seed(seed), device=input_ids.device
                )
        check_dropped_tokens(dropped_tokens, b, n_video)
        video_pos = input_ids == self.config.video_token_id  # (B, N)
        keep = sequence_keep_mask(video_pos, dropped_tokens.to(video_pos.device))  # (B, N)
        hidden = self._run_llm(compact(inputs_embeds, keep), compact(attention_mask, keep))  # (B, N_keep, D)
        logits = self.get_output_embeddings()(hidden)
        lm_loss = self._lm_loss(logits, compact(labels, keep)) if labels is not None else None
        kept_ratio = torch.tensor(1.0 - dropped_tokens[0].float().mean().item(), device=logits.device)

        loss_mvm = None
        if self.config.mvm_loss_weight > 0:
            with torch.no_grad():  # docs/original.md §2.2 step 4: stop-gradient target from the full sequence
                full = self._run_llm(inputs_embeds, attention_mask)  # (B, N, D)
            pred_pos, target_pos = self._mvm_positions(video_pos, keep, dropped_tokens)
            pred = compact(hidden, pred_pos)  # (B, L_keep, D) visible tokens, masked run
            if self.mvm_decoder is not None:
                pred = self.mvm_decoder(pred.to(self.mvm_decoder.head.weight.dtype))
            loss_mvm = mvm_loss(pred, compact(full, target_pos))
        loss = lm_loss
        if loss is not None and loss_mvm is not None:
            loss = loss + self.config.mvm_loss_weight * loss_mvm
        return StllmOutput(loss=loss, lm_loss=lm_loss, mvm_loss=loss_mvm, logits=logits, kept_ratio=kept_ratio)

    def _mvm_positions(
        self, video_pos: torch.Tensor, keep: torch.Tensor, dropped: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the visible video tokens in the masked run (B, N_keep) and in the full run (B, N).

        Default: the real positions of each sample's video tokens (docs/faithfulness.md Q3 [FIX]). With
        config.mvm_visual_start = s, the original's fixed slices [s, s + L_keep) and [s, s + L) are used.
        """
        start = self.config.mvm_visual_start
        if start is None:
            return compact(video_pos, keep), video_pos & keep
        b, n_video = dropped.shape
        n_keep = n_video - int(dropped[0].sum())
        pred_pos = torch.zeros(b, int(keep[0].sum()), dtype=torch.bool, device=keep.device)
        pred_pos[:, start : start + n_keep] = True
        target_pos = torch.zeros_like(keep)
        target_pos[:, start : start + n_video] = ~dropped.to(keep.device)
        return pred_pos, target_pos

    # --------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        video_input_override: str | None = None,
        max_context_length: int | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Answer ids only (B, new_tokens), through the LLM's KV-cached `generate` on the merged embeddings.

        The prompt goes in as embeddings, so a repetition penalty sees generated tokens only (docs/faithfulness.md Q26).
        `max_context_length`: the original's `max_length` rule (docs/faithfulness.md Q7 [KEEP]): the embedded prompt is
        cut from
        the left to max_context_length - max_new_tokens positions. `video_input_override` aggregates the frames
        with another mode (docs/faithfulness.md Q1: MVBench's legacy always-all-tokens path).
        """
        video_embeds = self._video_tokens(
            "generate",
            input_ids,
            pixel_values,
            qformer_input_ids,
            qformer_attention_mask,
            video_embeds,
            video_input_override,
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.merge_video_tokens(input_ids, video_embeds)
        if max_context_length is not None:
            max_new = generate_kwargs.get("max_new_tokens", 20)
            begin = max(0, embeds.shape[1] + max_new - max_context_length)
            if begin:
                logger.warning(
                    "prompt of %d positions cut from the left by %d (max_context_length=%d, docs/faithfulness.md Q7)",
                    embeds.shape[1],
                    begin,
                    max_context_length,
                )
            embeds, attention_mask = embeds[:, begin:], attention_mask[:, begin:]
        tc = self.config.text_config
        generate_kwargs.setdefault("pad_token_id", tc.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", tc.eos_token_id)
        generate_kwargs.setdefault("bos_token_id", tc.bos_token_id)
        # GenerationMixin annotates `self` with a Protocol that PreTrainedModel's `device` property does not satisfy
        return self.language_model.generate(  # pyright: ignore[reportAttributeAccessIssue]
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )


def attention_implementation(device: torch.device | str | None = None) -> str:
    """The one attention rule: flash_attention_2 on a CUDA device where flash-attn is installed, else SDPA."""
    from transformers.utils.import_utils import is_flash_attn_2_available

    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"
