"""Model folder -> (model, processor); (frames or video tokens, prompts) -> answer texts: the one inference path.

Evaluation (`stllm eval`), the terminal and web demos and the quickstart all load a model with `load` and decode
with `generate_raw`, so they share one dtype rule, one attention rule, one strict loader and one stop rule.

Decoding follows the original's chat path (docs/original.md §7.0): the prompt's `<ImageHere>` becomes the video
placeholder ids (the processor places the BOS), the model generates from embeddings with the "###" stop
sequences checked on the first row (docs/faithfulness.md Q30), a leading id 0 and then a leading id 1 are
dropped, the text is decoded and cut before the first "###" and after the last "Assistant:".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from stllm.data.processor import StllmProcessor
from stllm.errors import StllmError
from stllm.generation import GenerationConfig, strip_leading_special
from stllm.models.modeling import StllmForConditionalGeneration, attention_implementation

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(StllmError, ValueError):
    """A model folder that cannot be loaded exactly as saved (the message names the folder and the problem)."""


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The one inference dtype rule: "auto" is float16 on CUDA (the original evaluated and chatted in fp16,
    docs/original.md §7.0) and float32 on CPU; otherwise the named dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def load(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn: str = "auto",
) -> tuple[StllmForConditionalGeneration, StllmProcessor]:
    """A converted or trained model folder -> (model in eval mode without gradients, its processor).

    Strict: a tensor missing from the weight files, an extra tensor or a wrong shape is a ModelLoadError that
    lists them (docs/design.md decision 3). attn "auto" is flash-attention 2 on CUDA when installed, else SDPA.
    """
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no such model folder (config.json not found)")
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    implementation = attention_implementation(dev) if attn == "auto" else attn
    loaded = StllmForConditionalGeneration.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=implementation, output_loading_info=True
    )
    # with output_loading_info, from_pretrained returns (model, info); its annotation only names the model
    model, info = cast("tuple[StllmForConditionalGeneration, dict[str, Any]]", loaded)
    problems = [
        f"{len(info[k])} {what}: {sorted(info[k])[:20]}"
        for k, what in (
            ("missing_keys", "tensors missing from the weight files"),
            ("unexpected_keys", "tensors in the files that the model does not have"),
            ("mismatched_keys", "tensors of the wrong shape"),
        )
        if info.get(k)
    ]
    if problems:
        raise ModelLoadError(f"{path}: the weights do not fit the model: " + "; ".join(problems))
    model.requires_grad_(False)
    # PreTrainedModel.to is wrapped with functools.wraps, whose stub loses the method binding: call it as a Module's
    cast(torch.nn.Module, model).to(dev).eval()
    processor = StllmProcessor.from_pretrained(path, model.config)
    logger.info("loaded %s on %s (%s, attention %s)", path, dev, torch_dtype, implementation)
    return model, processor


class StopOnFirstRow(StoppingCriteria):
    """docs/original.md §7.0, Q30 [KEEP]: stop every row when the *first* row ends with a stop id sequence."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.sequences = [torch.tensor(s) for s in sequences if s]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        row = input_ids[0]
        hit = any(row.shape[0] >= len(s) and bool((row[-len(s) :].cpu() == s).all()) for s in self.sequences)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _strip_padding(ids: list[int], pad_id: int | None) -> list[int]:
    """Batched rows that finished early are right-padded with pad_id; remove that tail."""
    if pad_id is None:
        return ids
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]


@torch.no_grad()
def generate_raw(
    model: StllmForConditionalGeneration,
    processor: StllmProcessor,
    pixel_values: torch.Tensor | None,
    prompts: Sequence[str],
    qformer_texts: Sequence[str] | None,
    generation: GenerationConfig,
    video_input_override: str | None = None,
    *,
    video_embeds: torch.Tensor | None = None,
    num_frames: int | None = None,
    streamer: Any = None,
) -> list[str]:
    """pixel_values float (B, T, 3, S, S), B prompts (one "<ImageHere>" each), B Q-Former texts -> B decoded texts.

    The chat demo passes `video_embeds` (B, L, D) already encoded (with `num_frames`, no pixels or Q-Former
    texts) and a transformers streamer. Returns the decoded new tokens after dropping a leading id 0 then 1,
    before the text cut; `postprocess` gives the answer. Rows of a batch are left-padded.
    `video_input_override` aggregates frames with another mode (docs/faithfulness.md Q1, MVBench legacy path).
    """
    if video_embeds is not None:
        if num_frames is None or video_embeds.shape[0] != len(prompts):
            raise ValueError("video_embeds needs num_frames and one row per prompt")
    elif (
        pixel_values is None
        or qformer_texts is None
        or pixel_values.ndim != 5
        or pixel_values.shape[0] != len(prompts)
        or len(prompts) != len(qformer_texts)
    ):
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        raise ValueError(f"pixel_values {shape} must be (B, T, 3, S, S) with B == len(prompts) == len(qformer_texts)")
    else:
        num_frames = pixel_values.shape[1]
    assert num_frames is not None
    ids = [processor.build_prompt_ids(p, num_frames, video_input=video_input_override) for p in prompts]
    batch = processor.pad_left(ids)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    video: dict[str, Any]
    if video_embeds is not None:
        video = {"video_embeds": video_embeds.to(device)}
    else:
        assert pixel_values is not None and qformer_texts is not None
        qformer = processor.qformer_inputs(list(qformer_texts))
        video = {
            "pixel_values": pixel_values.to(device=device, dtype=dtype),
            "qformer_input_ids": qformer["qformer_input_ids"].to(device),
            "qformer_attention_mask": qformer["qformer_attention_mask"].to(device),
            "video_input_override": video_input_override,
        }
    kwargs = generation.kwargs()
    if streamer is not None:
        kwargs["streamer"] = streamer
    stop = processor.stop_token_sequences
    if stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnFirstRow(stop)])
    # docs/faithfulness.md Q7: the model cuts the embedded prompt from the left to max_length - max_new_tokens
    truncate = generation.keep_left_truncation and generation.max_length > 0
    out = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        max_context_length=generation.max_length if truncate else None,
        **video,
        **kwargs,
    )
    pad_id = model.config.text_config.pad_token_id
    rows: list[list[int]] = out.tolist()  # (B, new_tokens)
    return [processor.decode(strip_leading_special(_strip_padding(row, pad_id))) for row in rows]
