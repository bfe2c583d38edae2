"""Plain records passed between pipeline stages: decoded clip -> training/eval item -> processor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class VideoClip:
    """Frames decoded from one media file (a video, GIF, frame folder or image).

    frames: uint8 (T, H, W, 3), RGB. `indices` are the frame numbers in the source that were decoded (after
    sampling, padding by repetition included), so len(indices) == T.
    """

    frames: np.ndarray
    indices: list[int]
    fps: float
    total_frames: int
    duration: float
    path: str
    media_type: str = "video"  # video | gif | frames | image


@dataclass
class VideoQAItem:
    """One training or evaluation sample before tokenisation.

    pixel_values: float (T, 3, S, S), normalised with the CLIP mean/std; T == 1 for an image.
    instruction: VideoChat2-IT `i` field ("" if none); question: `q`; answer: `a` ("" at evaluation).
    """

    pixel_values: torch.Tensor
    instruction: str
    question: str
    answer: str
    media: str
    frame_indices: list[int]
    is_image: bool = False
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
