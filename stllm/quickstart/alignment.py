"""Vision-language alignment for the quickstart's tiny towers: each frame written as the LLM's embeddings of its words.

ST-LLM starts from an EVA ViT and a Q-Former that InstructBLIP already aligned with the LLM on images, and
keeps them frozen. The quickstart's towers are drawn at random, so they get that alignment here, in miniature:
single frames (no time at all), each a random frame of a freshly drawn clip, and the target is the LLM's input
embedding of that frame's words (stllm.quickstart.drawing: "red three" = the square's colour and column, "none none"
for an empty frame), one word per query token. The loss is a mean squared error normalised by the target's
power. The LLM is not touched. After this stage a frozen text-pretrained LLM reads the towers' tokens much as it
reads the words; everything about time is left to the video stage and the LLM, which is the paper's point.

The tower's position embeddings are redrawn at unit scale first: at the tiny recipe's initialiser range (0.05)
they are some twenty times weaker than the patch embeddings' output, and a tower trained from there learns the
square's colour but not its column within the budget (measured: column 20-30% against 66% with unit scale,
docs/quickstart.md).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from stllm.data.processor import StllmProcessor
from stllm.data.transforms import build_transform
from stllm.quickstart.drawing import TASKS, mcq

if TYPE_CHECKING:
    from stllm.models.modeling import StllmForConditionalGeneration

logger = logging.getLogger(__name__)

SLOTS = ("colour", "column")  # what each query token of a frame stands for


def frame_batch(
    processor: StllmProcessor, rng: random.Random, size: int, image_size: int, batch_size: int, clip_frames: int
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Random frames of freshly drawn clips -> (pixels (B, 1, 3, S, S), Q-Former texts, word ids (B, 2)).

    The Q-Former text is the clip's own multiple-choice question, as in video training (InstructBLIP feeds the
    instruction to the Q-Former); pixels go through the evaluation transform (resize + centre crop), so a
    column word keeps its meaning.
    """
    frames, texts, ids = [], [], []
    for _ in range(batch_size):
        clip = TASKS[rng.choice(list(TASKS))][0](rng, clip_frames, size)
        i = rng.randrange(clip_frames)
        words = processor.tokenizer.encode(clip.words[i])
        if len(words) != len(SLOTS):
            raise ValueError(
                f"frame words {clip.words[i]!r} are {len(words)} tokens, expected {len(SLOTS)}: the "
                "tokenizer must hold each colour and column as one piece (stllm.quickstart.drawing.corpus_words)"
            )
        frames.append(clip.frames[i])
        texts.append(mcq(clip, rng)[0])
        ids.append(words)
    pixels = build_transform(False, image_size)(np.stack(frames))  # (B, 3, S, S): frame by frame, in one call
    return pixels[:, None], texts, torch.tensor(ids)


def input_embedding_table(model: StllmForConditionalGeneration) -> torch.Tensor:
    """The LLM's input embedding matrix (V, D)."""
    embedding = model.language_model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        raise TypeError(f"expected the LLM's input embeddings to be an nn.Embedding, got {type(embedding).__name__}")
    return embedding.weight


@torch.no_grad()
def word_accuracy(
    model: StllmForConditionalGeneration,
    processor: StllmProcessor,
    seed: int,
    size: int,
    image_size: int,
    clip_frames: int,
    n: int = 256,
) -> dict[str, float]:
    """Held-out frames -> % per slot whose token's nearest LLM input embedding (L2) is the frame's word."""
    pixels, texts, ids = frame_batch(processor, random.Random(seed), size, image_size, n, clip_frames)
    was_training = model.training
    model.eval()
    tokens = model.get_frame_features(pixels, **processor.qformer_inputs(texts))[:, 0]  # (N, 2, D)
    model.train(was_training)
    table = input_embedding_table(model)  # (V, D)
    nearest = torch.cdist(tokens.reshape(-1, tokens.shape[-1]), table).argmin(-1).reshape(ids.shape)
    return {slot: 100.0 * (nearest[:, k] == ids[:, k]).float().mean().item() for k, slot in enumerate(SLOTS)}


def align_towers(
    model_dir: str | Path,
    steps: int,
    seed: int,
    image_size: int,
    size: int = 64,
    clip_frames: int = 16,
    batch_size: int = 64,
    lr: float = 3e-3,
    position_std: float = 1.0,
    progress: bool = True,
) -> dict[str, float]:
    """Train the EVA, Q-Former, query tokens and projection of the saved model in model_dir so that each frame's
    query tokens are the LLM's embeddings of its words; save in place (the LLM is unchanged).

    AdamW at `lr`, 5% warm-up then cosine, `steps` batches of `batch_size` frames. -> held-out word accuracy
    per slot (%, see word_accuracy).
    """
    from stllm.models.modeling import StllmForConditionalGeneration

    model_dir = Path(model_dir)
    model = StllmForConditionalGeneration.from_pretrained(model_dir)
    processor = StllmProcessor.from_pretrained(model_dir, model.config)
    if model.config.num_query_tokens != len(SLOTS):
        raise ValueError(
            f"{model_dir}: the alignment writes a frame as {len(SLOTS)} words, one per query token; "
            f"the model has num_query_tokens={model.config.num_query_tokens}"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pos = model.vision_model.embeddings.position_embedding
        pos.copy_(torch.randn(pos.shape, generator=generator) * position_std)
    model.language_model.requires_grad_(False)
    table = input_embedding_table(model).detach()  # (V, D)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps)))
    )
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="vision-language alignment", disable=not progress, mininterval=2.0)
    for step in bar:
        pixels, texts, ids = frame_batch(
            processor, random.Random(seed * 1_000_003 + step), size, image_size, batch_size, clip_frames
        )
        tokens = model.get_frame_features(pixels, **processor.qformer_inputs(texts))[:, 0]  # (B, 2, D)
        target = table[ids]  # (B, 2, D)
        loss = torch.nn.functional.mse_loss(tokens, target) / target.pow(2).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    accuracy = word_accuracy(model, processor, -1 - seed, size, image_size, clip_frames)
    logger.info("alignment: %d steps in %.0f s, held-out word accuracy %s", steps, time.perf_counter() - t0, accuracy)
    model.save_pretrained(model_dir)
    return accuracy
