"""Frames (B*T, 3, H, W) -> EVA features (B*T, 1+P, D), with the BT-Adapter temporal branch when enabled.

EVA ViT-g is transformers' `InstructBlipVisionModel` (its blocks match LAVIS EVA to float precision); this
module runs its blocks itself so that the BT-Adapter (docs/original.md §1.3) can read the outputs of the last `depth`
blocks. The branch carries (B, 1 + P*T, D) tokens: one CLS, then patch tokens in (patch, time) order.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn
from transformers import InstructBlipVisionConfig, InstructBlipVisionModel
from transformers import initialization as init
from transformers.models.instructblip.modeling_instructblip import InstructBlipAttention, InstructBlipEncoderLayer

InitScheme = Literal["zeros", "torch", "torch_zero_bias"]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples (dim 0) with probability p, rescale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class BTAdapterTemporal(nn.Module):
    """Temporal attention over the T frames of each patch position; CLS untouched (docs/original.md §1.3
    `BTAdapter_Temp`)."""

    def __init__(self, config: InstructBlipVisionConfig, drop_path_rate: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = InstructBlipAttention(config)
        self.temporal_fc = nn.Linear(config.hidden_size, config.hidden_size)  # zero-initialised: identity at start
        self.drop_path_rate = drop_path_rate
        # docs/original.md §1.3 initialisation, applied by StllmPreTrainedModel._init_weights through these tags
        tag_init(self.self_attn.qkv, "torch_zero_bias")  # PyTorch default weights, q/v biases zero
        tag_init(self.self_attn.projection, "torch")
        tag_init(self.temporal_fc, "zeros")

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]  # (B, 1, D), (B, P*T, D) in (p t) order
        b, pt, d = patches.shape
        seq = patches.reshape(b * (pt // num_frames), num_frames, d)  # (B*P, T, D)
        attended, _ = self.self_attn(self.layer_norm(seq))
        out = self.temporal_fc(drop_path(attended, self.drop_path_rate, self.training))
        return torch.cat([cls, out.reshape(b, pt, d) + patches], dim=1)


class BTAdapterSpatial(nn.Module):
    """Per-frame spatial attention with the branch CLS shared by all frames (docs/original.md §1.3 `BTAdapter_Spatial`).

    Its norms use eps 1e-5 although the EVA weights it starts from were trained with 1e-6 (docs/faithfulness.md Q11
    [KEEP]).
    """

    def __init__(self, config: InstructBlipVisionConfig, drop_path_rate: float) -> None:
        super().__init__()
        # InstructBlipEncoderLayer only reads the vision fields of its config (annotated as the composite one)
        self.layer = InstructBlipEncoderLayer(cast(Any, config))  # layer_norm1, self_attn, layer_norm2, mlp (EVA block)
        self.layer.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.layer.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        blk, t = self.layer, num_frames
        b, n, d = x.shape
        p = (n - 1) // t
        cls = x[:, :1].repeat_interleave(t, dim=0)  # (B*T, 1, D)
        patches = x[:, 1:].reshape(b, p, t, d).transpose(1, 2).reshape(b * t, p, d)  # (B*T, P, D)
        attended, _ = blk.self_attn(blk.layer_norm1(torch.cat([cls, patches], dim=1)))  # (B*T, 1+P, D)
        attended = drop_path(attended, self.drop_path_rate, self.training)
        new_cls = attended[:, :1].reshape(b, t, d).mean(dim=1, keepdim=True)  # (B, 1, D)
        new_patches = attended[:, 1:].reshape(b, t, p, d).transpose(1, 2).reshape(b, p * t, d)  # (p t) order
        x = x + torch.cat([new_cls, new_patches], dim=1)
        x = x + blk.mlp(blk.layer_norm2(x))
        # docs/original.md §1.3 / Q11 [KEEP]: stochastic depth on the whole output, residual included
        return drop_path(x, self.drop_path_rate, self.training)


class BTAdapter(nn.Module):
    """The BT-Adapter branch on the last `depth` EVA blocks (docs/original.md §1.3), merged as (EVA + branch) / 2."""

    def __init__(self, config: InstructBlipVisionConfig, depth: int, max_frames: int, drop_path_rate: float) -> None:
        super().__init__()
        d = config.hidden_size
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # [0, 0.05, 0.1] for depth 3
        self.depth = depth
        self.max_frames = max_frames
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.position_embedding = nn.Embedding(max_frames, d)  # temporal positions, at most 64 frames
        self.temporal = nn.ModuleList([BTAdapterTemporal(config, r) for r in rates])
        self.spatial = nn.ModuleList([BTAdapterSpatial(config, r) for r in rates])

    def _frame_tokens(self, h: torch.Tensor, b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """EVA block output (B*T, 1+P, D) -> mean-over-time CLS (B, 1, D), patches (B, T, P, D)."""
        h = h.reshape(b, t, h.shape[1], h.shape[2])
        return h[:, :, :1].mean(dim=1), h[:, :, 1:]

    def start(self, h: torch.Tensor, pos_embed: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """Branch input from the first adapted block (docs/original.md §1.3 step 1) -> (B, 1+P*T, D)."""
        cls_x, patches = self._frame_tokens(h, b, t)
        patches = patches + pos_embed[:, 1:].unsqueeze(1)  # EVA spatial positions added again (Q11 [KEEP])
        cls_branch = self.cls_token + pos_embed[:, :1]  # (1, 1, D)
        temporal = self.position_embedding(torch.arange(t, device=h.device))  # (T, D)
        patches = patches.transpose(1, 2) + temporal  # (B, P, T, D)
        patches = patches.flatten(1, 2)  # (B, P*T, D), (p t) order
        return torch.cat([(cls_x + cls_branch) / 2, patches], dim=1)

    def step(self, k: int, h: torch.Tensor, branch: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """Add adapted block k's EVA output to the branch (k >= 1, docs/original.md §1.3 step 2)."""
        cls_x, patches = self._frame_tokens(h, b, t)
        return branch + torch.cat([cls_x, patches.transpose(1, 2).flatten(1, 2)], dim=1)

    @staticmethod
    def to_frames(branch: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """(B, 1+P*T, D) -> (B*T, 1+P, D): the branch CLS repeated for every frame, patches back to frame order."""
        d = branch.shape[-1]
        p = (branch.shape[1] - 1) // t
        cls = branch[:, :1].repeat_interleave(t, dim=0)  # (B*T, 1, D)
        patches = branch[:, 1:].reshape(b, p, t, d).transpose(1, 2).reshape(b * t, p, d)
        return torch.cat([cls, patches], dim=1)


def encode_frames(
    vision_model: InstructBlipVisionModel,
    btadapter: BTAdapter | None,
    pixel_values: torch.Tensor,
    num_frames: int,
    return_block_outputs: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """pixel_values (B*T, 3, H, W) -> features (B*T, 1+P, D) after `ln_vision` (= `post_layernorm`).

    `InstructBlipVisionModel` run block by block, plus the optional BT-Adapter branch fed from its last blocks.
    With `return_block_outputs` the second value holds every intermediate output (parity tests).
    """
    hidden = vision_model.embeddings(pixel_values)  # (B*T, 1+P, D)
    layers = vision_model.encoder.layers
    bt = hidden.shape[0]
    b, t = bt // num_frames, num_frames
    first = len(layers) - btadapter.depth if btadapter is not None else len(layers)
    branch = None
    extras: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        hidden = layer(hidden)
        if return_block_outputs:
            extras[f"block{i}_out"] = hidden
        k = i - first
        if btadapter is not None and k >= 0:
            if k == 0:
                branch = btadapter.start(hidden, vision_model.embeddings.position_embedding, b, t)
            elif branch is None:  # only when the branch has more blocks than EVA, so k == 0 never came
                raise ValueError(f"BT-Adapter depth {btadapter.depth} exceeds the {len(layers)} vision blocks")
            else:
                branch = btadapter.step(k, hidden, branch, b, t)
            branch = btadapter.temporal[k](branch, t)
            if return_block_outputs:
                extras[f"btadapter_temporal{k}_out"] = branch
            branch = btadapter.spatial[k](branch, t)
            if return_block_outputs:
                extras[f"btadapter_spatial{k}_out"] = branch
    if branch is not None:
        hidden = (hidden + BTAdapter.to_frames(branch, b, t)) / 2
    if return_block_outputs:
        extras["encoder_out"] = hidden
    return vision_model.post_layernorm(hidden), extras


def tag_init(layer: nn.Linear, scheme: InitScheme) -> None:
    """Tag `layer` with the scheme init_tagged_layer applies to it (docs/original.md §1.3-1.8)."""
    # a plain attribute on the torch layer; the stub of nn.Module.__setattr__ only admits tensors and modules
    cast(Any, layer).init_scheme = scheme


def init_tagged_layer(module: nn.Module) -> None:
    """Apply a layer's `init_scheme` tag (set where the original fixes an init, docs/original.md §1.3-1.8) through
    transformers.initialization.

    transformers 5 skips `_init_weights` for custom modules without direct parameters, so the scheme is carried
    by the leaf layer itself: "zeros", "torch" (PyTorch's nn.Linear default) or "torch_zero_bias".
    """
    scheme = getattr(module, "init_scheme", None)
    if scheme is not None:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"init_scheme {scheme!r} is for nn.Linear layers, found on a {type(module).__name__}")
        if scheme == "zeros":
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif scheme in ("torch", "torch_zero_bias"):
            _torch_default_linear(module)
            if scheme == "torch_zero_bias":
                init.zeros_(module.bias)
    if isinstance(module, BTAdapter):
        init.zeros_(module.cls_token)
        init.normal_(module.position_embedding.weight, mean=0.0, std=1.0)  # nn.Embedding default N(0, 1)


def _torch_default_linear(linear: nn.Linear) -> None:
    """PyTorch's own nn.Linear init: kaiming_uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) bias."""
    init.kaiming_uniform_(linear.weight, a=5**0.5)
    if linear.bias is not None:
        bound = 1 / linear.weight.shape[1] ** 0.5
        init.uniform_(linear.bias, -bound, bound)
