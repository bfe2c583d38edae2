"""Training / evaluation transforms: shapes, CLIP normalisation, one crop for all frames, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stllm.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    EvalTransform,
    TrainTransform,
    center_crop_box,
    normalize,
    random_resized_crop_params,
    resized_shape,
)


def clip(t=4, h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_train_transform_shape_dtype_and_determinism():
    frames = clip()
    tf = TrainTransform(32)
    a = tf(frames, generator=torch.Generator().manual_seed(5))
    b = tf(torch.from_numpy(frames), generator=torch.Generator().manual_seed(5))
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    c = tf(frames, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_train_transform_same_crop_for_every_frame():
    one = clip(t=1)
    frames = np.repeat(one, 5, axis=0)  # five identical frames must stay identical
    out = TrainTransform(24)(frames, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(out[0], out[t]) for t in range(5))
    single = TrainTransform(24)(one, generator=torch.Generator().manual_seed(1))
    assert torch.equal(single[0], out[0])


def test_random_resized_crop_params_bounds_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(60, 80, g)
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.5 * 4800 * 0.7 <= h * w <= 4800  # area within scale (0.5, 1) up to rounding
    # a 1000:1 strip cannot fit any ratio in [3/4, 4/3]: central crop of ratio 4/3 over the full height
    assert random_resized_crop_params(3, 3000, g) == (0, (3000 - 4) // 2, 3, 4)
    assert random_resized_crop_params(3000, 3, g) == ((3000 - 4) // 2, 0, 4, 3)


def test_train_crop_matches_manual_crop_resize():
    frames = clip(t=2, h=40, w=40)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    out = TrainTransform(20)(frames, generator=g1)
    top, left, h, w = random_resized_crop_params(40, 40, g2)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)[..., top : top + h, left : left + w].float()
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bicubic", align_corners=False)
    x = x.clamp(0, 255).round().to(torch.uint8)  # torchvision 0.15 tensor path rounds back to uint8
    assert torch.allclose(out, normalize(x), atol=1e-6)


def test_normalisation_values():
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 0, 255, 128
    out = EvalTransform(8)(frames)
    expected = [
        (0 - CLIP_MEAN[0]) / CLIP_STD[0],
        (1 - CLIP_MEAN[1]) / CLIP_STD[1],
        (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2],
    ]
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((8, 8), expected[c]), atol=1e-5)


def test_eval_transform_is_pil_resize_then_centre_crop():
    frames = clip(t=3, h=60, w=90)
    out = EvalTransform(30)(frames)
    assert out.shape == (3, 3, 30, 30) and out.is_contiguous()
    assert resized_shape(60, 90, 30) == (30, 45) and center_crop_box(30, 45, 30) == (0, 8)  # round(7.5) = 8
    pil = np.asarray(Image.fromarray(frames[1]).resize((45, 30), Image.BICUBIC))[:, 8:38]
    ref = normalize(torch.from_numpy(np.ascontiguousarray(pil))[None].permute(0, 3, 1, 2))
    assert torch.equal(out[1:2], ref)


def test_eval_transform_portrait_and_torch_resize_close():
    frames = clip(t=2, h=90, w=60)
    exact = EvalTransform(30)(frames)
    fast = EvalTransform(30, resize="torch")(frames)
    assert exact.shape == fast.shape == (2, 3, 30, 30)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert ((exact - fast).abs() * std * 255).max() <= 3.01  # a few grey levels at most


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="uint8"):
        TrainTransform(16)(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform(16)(np.zeros((8, 8, 3), np.uint8))
