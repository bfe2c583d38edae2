"""uint8 frames (T,H,W,3) -> normalised float32 pixel_values (T,3,S,S): training and evaluation transforms.

No torchvision (the PyPI builds are CUDA builds that break the CPU install; see README, Install): the two pipelines are
rebuilt
from plain torch ops and Pillow, following what torchvision 0.15 did in the original:
- training (docs/original.md §4.5): RandomResizedCrop(S, scale=(0.5, 1), ratio=(3/4, 4/3), bicubic) on the uint8
*tensor*
  (one crop for all frames, no antialias, result rounded back to uint8), then /255 and CLIP normalisation;
- evaluation (docs/original.md §7.1): frames were PIL images, so Resize(S) is Pillow's bicubic (shorter side to S), then
  CenterCrop(S), /255, CLIP normalisation.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# CLIP statistics (docs/original.md §4.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_uint8_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T,H,W,3) uint8 numpy/torch -> (T,3,H,W) uint8 tensor (a view when possible)."""
    if isinstance(frames, np.ndarray):
        frames = np.ascontiguousarray(frames) if frames.flags.writeable else frames.copy()
    t = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(t.shape)} {t.dtype}")
    return t.permute(0, 3, 1, 2)  # (T, 3, H, W)


def normalize(frames_u8: torch.Tensor) -> torch.Tensor:
    """(T,3,S,S) uint8 -> float32 /255 then (x - CLIP mean) / CLIP std."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (frames_u8.float().div_(255.0) - mean).div_(std)


# (x/255 - mean)/std for every uint8 value, computed with the same float32 ops as `normalize`, so a table
# lookup gives bit-identical results in one pass instead of three (the eval path's hot loop).
_NORM_LUT = (
    (np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)) - np.array(CLIP_MEAN, dtype=np.float32)[:, None]
) / np.array(CLIP_STD, dtype=np.float32)[:, None]


def normalize_hwc(frames: np.ndarray) -> torch.Tensor:
    """(T,S,S,3) uint8 numpy (any strides) -> contiguous float32 (T,3,S,S), identical to `normalize`."""
    out = np.empty((frames.shape[0], 3, frames.shape[1], frames.shape[2]), dtype=np.float32)
    for c in range(3):
        np.take(_NORM_LUT[c], frames[..., c], out=out[:, c])
    return torch.from_numpy(out)


def random_resized_crop_params(
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """RandomResizedCrop parameter sampling -> (top, left, h, w).

    Ten attempts: area fraction ~ U(scale), log aspect ratio ~ U(log ratio); accept the first box that fits,
    with its corner uniform over valid positions. Else fall back to the largest central crop whose aspect
    ratio is within `ratio`. Draws use `generator` in the same order as torchvision, so a seeded generator
    gives the same boxes.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bicubic_tensor(frames_u8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T,3,H,W) uint8 -> (T,3,h,w) uint8: torchvision 0.15 tensor resize (bicubic, no antialias, clamp, round)."""
    x = F.interpolate(frames_u8.float(), size=size, mode="bicubic", align_corners=False, antialias=False)
    return x.clamp_(0, 255).round_().to(torch.uint8)


class TrainTransform:
    """docs/original.md §4.5: (T,H,W,3) uint8 -> (T,3,S,S) float32; one RandomResizedCrop box shared by every frame."""

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    ):
        # tuple() also takes the [low, high] lists of a YAML config
        self.size = size
        self.scale = cast("tuple[float, float]", tuple(scale))
        self.ratio = cast("tuple[float, float]", tuple(ratio))

    def __call__(self, frames: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _as_uint8_tensor(frames)  # (T, 3, H, W)
        top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], generator, self.scale, self.ratio)
        x = x[..., top : top + h, left : left + w]  # (T, 3, h, w), same box for all frames
        return normalize(resize_bicubic_tensor(x, (self.size, self.size)))

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, bicubic)"


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): shorter side -> size, longer side -> int(size * long / short)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_box(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision CenterCrop corner (top, left) = round((H - S) / 2), round((W - S) / 2)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Threads for per-frame Pillow resizes (same bytes as a loop; Pillow resamples without holding the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="stllm-resize")
    return _POOL


class EvalTransform:
    """docs/original.md §7.1: (T,H,W,3) uint8 -> (T,3,S,S) float32: shorter side to S (bicubic), centre crop, CLIP
    normalise.

    resize="pil" (default) is exact: Pillow's bicubic on uint8 images, as the original did with PIL frames.
    resize="torch" is torch's uint8 antialiased bicubic (channels-last fast path): about 6x faster, but it
    differs from Pillow by up to 2 grey levels on ~0.1% of the values. Both resize before any float work;
    normalisation is a table lookup on the S x S crop.
    """

    def __init__(self, size: int = 224, resize: str = "pil"):
        if resize not in ("pil", "torch"):
            raise ValueError(f"resize must be pil or torch, got {resize!r}")
        self.size, self.resize = size, resize

    def resize_crop(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """(T,H,W,3) uint8 -> (T,S,S,3) uint8 (resized shorter side then centre-cropped; may be a strided view)."""
        arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {arr.shape} {arr.dtype}")
        height, width = arr.shape[1:3]
        new_h, new_w = resized_shape(height, width, self.size)
        top, left = center_crop_box(new_h, new_w, self.size)
        if (new_h, new_w) == (height, width):
            resized = arr
        elif self.resize == "torch":
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (T, 3, H, W) channels-last view
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
            resized = x.permute(0, 2, 3, 1).numpy()  # (T, h, w, 3)
        else:
            size = (new_w, new_h)
            resized = np.stack(
                list(_pool().map(lambda f: np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)), arr))
            )  # Pillow releases the GIL while resampling
        return resized[:, top : top + self.size, left : left + self.size]  # (T, S, S, 3)

    def __call__(self, frames: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return normalize_hwc(self.resize_crop(frames))  # (T, 3, S, S) float32, contiguous

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={self.resize} bicubic, center crop)"


def build_transform(train: bool, size: int = 224) -> TrainTransform | EvalTransform:
    """The training (random crop) or evaluation (resize + centre crop) transform at image size `size`."""
    return TrainTransform(size) if train else EvalTransform(size)
