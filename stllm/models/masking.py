"""Dynamic token masking and the masked-video-modelling loss (docs/original.md §2): video tokens -> kept subset, 2 -
2cos loss.

The original draws one ratio per batch, r ~ clip(N(0.5, 0.1), 0.1, 0.7), drops int(r * L) of the L video
tokens of every sample (the same count, different positions) and never inserts a mask token: the kept tokens
close ranks, so their RoPE positions are contiguous (docs/original.md §2.1). The MVM target is the full (unmasked) run's
final hidden state at the *kept* tokens, without gradient (docs/original.md §2.2, Q6b [KEEP]).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_mask_ratio(mean: float, std: float, low: float, high: float, rng: np.random.Generator) -> float:
    """docs/original.md §2.1 step 2: one ratio per forward call, r = clip(N(mean, std), low, high)."""
    return float(np.clip(rng.normal(mean, std), low, high))


def sample_dropped_tokens(
    batch: int, length: int, ratio: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """docs/original.md §2.1 step 3: bool (B, L), True = dropped; exactly int(ratio * L) per row, positions random per
    row."""
    num_drop = int(ratio * length)
    scores = torch.rand(batch, length, generator=generator)  # a random permutation per row
    order = scores.argsort(dim=1)
    dropped = torch.zeros(batch, length, dtype=torch.bool)
    dropped.scatter_(1, order[:, :num_drop], True)
    return dropped.to(device)


MASK_RNG_MODES = ("stllm", "original")


def sample_original_mask(batch: int, length: int, mean: float, std: float, low: float, high: float) -> torch.Tensor:
    """docs/original.md §2.1 with the original's own random stream (docs/faithfulness.md, "Random streams"):
    bool (B, L), True = dropped.

    Both draws come from NumPy's *global* state, in the original's order: first the ratio
    `np.random.normal(mean, std)` (then clipped), then per sample, sample 0 first, one `np.random.shuffle` of
    `[0] * (L - n) + [1] * n` with n = int(r L) (1 = dropped). So `np.random.seed(s)` right before a training
    forward gives the original's masks exactly.
    """
    ratio = float(np.clip(np.random.normal(mean, std), low, high))
    num_drop = int(ratio * length)
    rows = []
    for _ in range(batch):
        row = np.hstack([np.zeros(length - num_drop), np.ones(num_drop)])
        np.random.shuffle(row)  # the legacy global shuffle: same draws for a list or a 1-D array
        rows.append(row)
    return torch.from_numpy(np.stack(rows)).to(torch.bool)


def check_dropped_tokens(dropped: torch.Tensor, batch: int, length: int) -> None:
    """A caller-given mask must be (B, L) bool with the same number of dropped tokens in every row."""
    if dropped.dtype != torch.bool or tuple(dropped.shape) != (batch, length):
        raise ValueError(
            f"dropped_tokens must be a bool tensor of shape ({batch}, {length}) (batch, video tokens), "
            f"got {tuple(dropped.shape)} {dropped.dtype}"
        )
    counts = dropped.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(
            f"dropped_tokens must drop the same number of tokens in every sample (docs/original.md §2.1), got "
            f"{counts.tolist()}"
        )
    if int(counts[0]) >= length:
        raise ValueError("dropped_tokens drops every video token; at least one must be kept")


def sequence_keep_mask(video_positions: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Positions of the full sequence to keep: (B, N) bool from the video mask (B, N) and dropped (B, L).

    The video positions of each row are visited in order, so dropped[:, j] refers to the j-th video token.
    """
    keep = torch.ones_like(video_positions)
    keep[video_positions] = ~dropped.reshape(-1)
    return keep


def compact(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Select kept positions of (B, N, ...) with an equal count per row -> (B, N_keep, ...), order preserved."""
    b = x.shape[0]
    return x[keep].reshape(b, -1, *x.shape[2:])


def mvm_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """docs/original.md §2.2 step 6: mean over tokens of 2 - 2 <p/|p|, t/|t|>, inputs (B, L_keep, D) -> scalar
    (float32)."""
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    return (2 - 2 * (p * t).sum(dim=-1)).mean()
