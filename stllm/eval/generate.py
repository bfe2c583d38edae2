"""(model, processor, frames, prompt strings) -> answer texts: the one decoding path of evaluation and the demos.

SPEC 7.0: the prompt's "<ImageHere>" becomes the video placeholder ids (processor, BOS rules of SPEC 3.1/3.3), the
model generates with the "###" stop sequences on the first row (Q30), the leading ids 0 then 1 are dropped, the text
is decoded and cut (before the first "###", after the last "Assistant:", stripped).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch

from stllm.eval.config import GenerationConfig
from stllm.eval.prompts import postprocess, strip_leading_special

logger = logging.getLogger(__name__)


def generation_kwargs(gen: GenerationConfig) -> dict[str, Any]:
    """GenerationConfig -> keyword arguments of model.generate (the original passed all of them, SPEC 7.5)."""
    kwargs: dict[str, Any] = dict(
        num_beams=gen.num_beams, do_sample=gen.do_sample, max_new_tokens=gen.max_new_tokens,
        min_length=gen.min_length, repetition_penalty=gen.repetition_penalty, length_penalty=gen.length_penalty,
    )
    if gen.do_sample:  # temperature/top_p are inactive under greedy/beam search (SPEC 7.5); only pass when used
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    return kwargs


def _prompt_ids(processor: Any, prompt: str, num_frames: int, video_input: Optional[str]) -> list[int]:
    # SPEC Q1 legacy path: with an overriding mode the placeholder count follows that mode
    return processor.build_prompt_ids(prompt, num_frames, video_input=video_input)


def _strip_padding(ids: list[int], pad_id: Optional[int]) -> list[int]:
    """Batched rows that finished early are right-padded with pad_id; remove that tail."""
    if pad_id is None:
        return ids
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


@torch.no_grad()
def generate_raw(
    model: Any,
    processor: Any,
    pixel_values: Optional[torch.Tensor],
    prompts: Sequence[str],
    qformer_texts: Optional[Sequence[str]],
    generation: GenerationConfig,
    video_input_override: Optional[str] = None,
    *,
    video_embeds: Optional[torch.Tensor] = None,
    num_frames: Optional[int] = None,
    streamer: Any = None,
) -> list[str]:
    """pixel_values float (B, T, 3, S, S), B prompts (one "<ImageHere>" each), B Q-Former texts -> B decoded texts.

    The chat demo passes `video_embeds` (B, L, D) already encoded (with `num_frames`, and no pixels or Q-Former
    texts) and a transformers streamer. Returns the decoded new tokens after dropping a leading id 0 then 1
    (SPEC 7.0), before the text cut; pass each through `stllm.eval.prompts.postprocess` for the answer. Rows of a
    batch are left-padded.
    """
    if video_embeds is not None:
        if num_frames is None or video_embeds.shape[0] != len(prompts):
            raise ValueError("video_embeds needs num_frames and one row per prompt")
    elif (pixel_values is None or qformer_texts is None or pixel_values.ndim != 5
          or pixel_values.shape[0] != len(prompts) or len(prompts) != len(qformer_texts)):
        raise ValueError(f"pixel_values {None if pixel_values is None else tuple(pixel_values.shape)} must be "
                         f"(B, T, 3, S, S) with B == len(prompts) == len(qformer_texts)")
    else:
        num_frames = pixel_values.shape[1]
    ids = [_prompt_ids(processor, p, num_frames, video_input_override) for p in prompts]
    batch = processor.pad_left(ids)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype

    def to_dev(x: Any) -> Any:
        return torch.as_tensor(x).to(device)

    if video_embeds is not None:
        video: dict[str, Any] = {"video_embeds": video_embeds.to(device)}
    else:
        qformer = processor.qformer_inputs(list(qformer_texts))
        video = {"pixel_values": pixel_values.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32),
                 "qformer_input_ids": to_dev(qformer["qformer_input_ids"]),
                 "qformer_attention_mask": to_dev(qformer["qformer_attention_mask"]),
                 "video_input_override": video_input_override}
    kwargs = generation_kwargs(generation)
    if streamer is not None:
        kwargs["streamer"] = streamer
    # SPEC Q7: the model cuts the embedded prompt from the left to max_length - max_new_tokens positions
    truncate = generation.keep_left_truncation and generation.max_length > 0
    out = model.generate(
        input_ids=to_dev(batch["input_ids"]),
        attention_mask=to_dev(batch["attention_mask"]),
        stop_token_sequences=processor.stop_token_sequences,
        max_context_length=generation.max_length if truncate else None,
        **video,
        **kwargs,
    )
    pad_id = getattr(getattr(model.config, "text_config", model.config), "pad_token_id", None)
    texts = []
    for row in out.tolist():  # (B, new_tokens)
        texts.append(processor.decode(strip_leading_special(_strip_padding(row, pad_id))))
    return texts


def answer(
    model: Any,
    processor: Any,
    pixel_values: torch.Tensor,
    prompts: Sequence[str],
    qformer_texts: Sequence[str],
    generation: GenerationConfig,
    video_input_override: Optional[str] = None,
) -> list[str]:
    """Like `generate_raw`, then the SPEC 7.0 text cut: the answers as the original's `Chat.answer` returned them."""
    raw = generate_raw(model, processor, pixel_values, prompts, qformer_texts, generation, video_input_override)
    return [postprocess(t) for t in raw]


def describe_generation(generation: GenerationConfig) -> dict[str, Any]:
    """Plain dict of the decoding settings for run_info.json / results.json, with a one-word sampling rule."""
    d = asdict(generation)
    d["rule"] = "sample" if generation.do_sample else ("beam" if generation.num_beams > 1 else "greedy")
    return d
