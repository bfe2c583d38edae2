"""Model folder -> (model, processor); (frames or video tokens, prompts) -> answer texts: the one inference path.

Evaluation (`stllm eval`), the terminal and web demos and the quickstart all load a model with `load` and decode
with `generate_raw`, so they share one dtype rule, one attention rule, one strict loader and one stop rule.

Decoding follows the original's chat path (docs/original.md §7.0): the prompt's `<ImageHere>` becomes the video
placeholder ids (the processor places the BOS), the model generates from embeddings with the "###" stop
sequences checked on the first row (docs/faithfulness.md Q30), a leading id 0 and then a leading id 1 are
dropped, the text is decoded and cut before the first "###" and after the last "Assistant:".
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from stllm.checkpoints.io import CheckpointError, check_safetensors, list_shards
from stllm.data.processor import StllmProcessor
from stllm.errors import StllmError
from stllm.generation import GenerationConfig, strip_leading_special
from stllm.models.configuration import StllmConfig
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


# the files a model folder needs besides the weights (StllmProcessor.save_pretrained writes them)
PROCESSOR_FILES = ("processor_config.json", "tokenizer.model", "qformer_tokenizer/vocab.txt")


def _looks_like_hub_id(name: str) -> bool:
    """Whether `name` reads as "org/name", a Hugging Face Hub id (which `load` never fetches), rather than a path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not name.startswith((".", "~"))


def check_model_folder(model_dir: str | Path) -> StllmConfig:
    """A model folder -> its config, after checking, without loading tensors, that every file `load` reads is there
    and readable: config.json, the tokenizer files, whole (untruncated) weight files. ModelLoadError otherwise.

    Never looks anything up online: a path that does not exist is "no such model folder" at once.
    """
    path = Path(model_dir)
    if not path.exists():
        hint = (
            " (Hub ids are not loaded: convert the weights first, docs/checkpoints.md)"
            if _looks_like_hub_id(str(model_dir))
            else ""
        )
        raise ModelLoadError(f"{path}: no such model folder{hint}")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a folder (a model folder holds config.json, weights and tokenizer files)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path}: not a model folder (config.json not found)")
    try:
        config = StllmConfig.from_json_file(str(config_file))
    except (OSError, ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        detail = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{config_file}: not a valid stllm config ({type(err).__name__}: {detail})") from err
    missing = [name for name in PROCESSOR_FILES if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"{path}: tokenizer files missing: {', '.join(missing)} (a converted or trained folder has them; "
            "copy them from the folder this model came from)"
        )
    try:
        for shard in list_shards(path):
            if shard.suffix == ".safetensors":
                check_safetensors(shard)
    except CheckpointError as err:
        raise ModelLoadError(str(err)) from err
    return config


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _no_load_report() -> Iterator[None]:
    """transformers logs a multi-line LOAD REPORT table for missing/unexpected/mismatched keys; `load` raises one
    line listing them instead, so the table is noise (docs/reliability.md, Model folders). A filter, not a level:
    transformers runs extra checks that log when that logger's level is raised."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    report_logger.addFilter(drop)
    try:
        yield
    finally:
        report_logger.removeFilter(drop)


def _non_finite(model: torch.nn.Module) -> list[str]:
    """Names of floating-point parameters/buffers holding NaN or inf (a model that answers, but wrongly)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = "auto",
    attn: str = "auto",
) -> tuple[StllmForConditionalGeneration, StllmProcessor]:
    """A converted or trained model folder -> (model in eval mode without gradients, its processor).

    Strict (docs/design.md decision 3): a folder that is absent, a config.json or tokenizer file that is missing or
    unreadable, a truncated weight file, a tensor missing from the weight files, an extra tensor, a wrong shape or
    a non-finite weight is a one-line ModelLoadError naming the folder and the keys. attn "auto" is
    flash-attention 2 on CUDA when installed, else SDPA.
    """
    path = Path(model_dir)
    config = check_model_folder(path)
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    implementation = attention_implementation(dev) if attn == "auto" else attn
    try:
        with _no_load_report():
            # ignore_mismatched_sizes: transformers then *reports* wrong shapes in the loading info (instead of a
            # RuntimeError pointing at its log table); every reported key is refused below
            loaded = StllmForConditionalGeneration.from_pretrained(
                path,
                config=config,
                dtype=torch_dtype,
                attn_implementation=implementation,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        detail = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{path}: cannot load the weights ({type(err).__name__}: {detail})") from err
    # with output_loading_info, from_pretrained returns (model, info); its annotation only names the model
    model, info = cast("tuple[StllmForConditionalGeneration, dict[str, Any]]", loaded)
    mismatched = sorted(
        f"{k} {list(ckpt)} in the files, {list(ours)} in the model"
        for k, ckpt, ours in info.get("mismatched_keys") or ()
    )
    problems = [
        f"{len(keys)} {what}: {keys[:20]}"
        for keys, what in (
            (sorted(info.get("missing_keys") or ()), "tensors missing from the weight files"),
            (sorted(info.get("unexpected_keys") or ()), "tensors in the files that the model does not have"),
            (mismatched, "tensors of the wrong shape"),
            (list(info.get("error_msgs") or ()), "loading errors"),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(f"{path}: the weights do not fit the model: " + "; ".join(problems))
    model.requires_grad_(False)
    # PreTrainedModel.to is wrapped with functools.wraps, whose stub loses the method binding: call it as a Module's
    cast(torch.nn.Module, model).to(dev).eval()
    bad = _non_finite(model)
    if bad:
        raise ModelLoadError(f"{path}: {len(bad)} weight tensors hold NaN or inf: {bad[:20]}")
    try:
        processor = StllmProcessor.from_pretrained(path, model.config)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:  # sentencepiece raises RuntimeError
        detail = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{path}: cannot read the tokenizer files ({type(err).__name__}: {detail})") from err
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


class StopEachItemOnItsFirstRow(StoppingCriteria):
    """Q30 [KEEP] per item of a batch: the rows are B items' groups of g (g = beams kept per item, 1 when greedy);
    an item's rows stop when *its* first row ends with a stop id sequence. At B = 1 this is StopOnFirstRow exactly;
    at B > 1 no item is cut short or run on by another, so a batch answers each item as batch 1 does."""

    def __init__(self, sequences: list[list[int]], batch_size: int) -> None:
        self.sequences = [torch.tensor(s) for s in sequences if s]
        self.batch_size = batch_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        rows, length = input_ids.shape
        if rows % self.batch_size:
            raise ValueError(f"{rows} generation rows do not split into {self.batch_size} items")
        group = rows // self.batch_size
        firsts = input_ids[::group]  # (B, N): each item's first row
        hit = torch.zeros(self.batch_size, dtype=torch.bool, device=input_ids.device)
        for s in self.sequences:
            if length >= len(s):
                hit |= (firsts[:, -len(s) :] == s.to(input_ids.device)).all(dim=1)
        return hit.repeat_interleave(group)  # type: ignore[return-value]  # (rows,)


class PlaceholderRepetitionPenalty(LogitsProcessor):
    """docs/faithfulness.md Q34: transformers 4.28's repetition penalty over [bos placeholder] + generated ids.

    4.28 started `generate(inputs_embeds=...)` from input_ids = [[bos_token_id]], so its
    RepetitionPenaltyLogitsProcessor scored the placeholder as if generated: at every step, for each distinct id
    in [placeholder, generated...], a negative score is multiplied by the penalty and a positive one divided by
    it. transformers 5 starts from no ids; this processor adds the placeholder back (input_ids (B, n) of the new
    ids, scores (B, V) -> new scores (B, V)).
    """

    def __init__(self, penalty: float, placeholder_id: int) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = penalty
        self.placeholder_id = placeholder_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        first = torch.full((input_ids.shape[0], 1), self.placeholder_id, dtype=torch.long, device=input_ids.device)
        ids = torch.cat([first, input_ids.long()], dim=1)  # (B, 1 + n)
        picked = torch.gather(scores, 1, ids)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        # out of place (4.28 wrote in place): transformers 5 keeps the unprocessed tensor as the raw logits
        return scores.scatter(1, ids, picked)  # type: ignore[return-value]


def decoding_kwargs(generation: GenerationConfig) -> dict[str, Any]:
    """GenerationConfig -> model.generate keyword arguments, with the 4.28 placeholder penalty when it is on.

    With `bos_placeholder` and a penalty != 1, transformers' own penalty is replaced by PlaceholderRepetitionPenalty
    (docs/faithfulness.md Q34); otherwise the arguments are `generation.kwargs()` unchanged.
    """
    kwargs = generation.kwargs()
    if generation.bos_placeholder and generation.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = 1.0
        penalty = PlaceholderRepetitionPenalty(generation.repetition_penalty, generation.bos_placeholder_id)
        kwargs["logits_processor"] = LogitsProcessorList([penalty])
    return kwargs


class AnswerText(str):
    """A decoded answer: the string is the clean text (special tokens dropped: what the demos show); `original` is
    the same ids decoded as the original did (docs/faithfulness.md Q35: "</s>" and id 0 rendered as text)."""

    original: str

    def __new__(cls, clean: str, original: str) -> AnswerText:
        obj = super().__new__(cls, clean)
        obj.original = original
        return obj


def decode_answer(processor: StllmProcessor, ids: Sequence[int], generation: GenerationConfig) -> AnswerText:
    """New ids of one row (padding removed) -> AnswerText, after the original's leading-id rule (docs/original.md
    §7.0), run on [placeholder] + ids when the 4.28 BOS placeholder is on (docs/faithfulness.md Q34)."""
    placeholder = generation.bos_placeholder_id if generation.bos_placeholder else None
    kept = strip_leading_special(ids, placeholder)
    return AnswerText(processor.decode(kept), processor.tokenizer.decode(kept, original=True))


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
    before the text cut; `postprocess` gives the answer. Rows of a batch are left-padded and each item stops at its
    own stop sequence (StopEachItemOnItsFirstRow: batch results equal batch-1 results).
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
    kwargs = decoding_kwargs(generation)  # docs/faithfulness.md Q34: the 4.28 BOS placeholder under the penalty
    if streamer is not None:
        kwargs["streamer"] = streamer
    stop = processor.stop_token_sequences
    if stop:
        # batch 1: the original's first-row rule; batch > 1: the same rule applied to each item on its own
        kwargs["stopping_criteria"] = StoppingCriteriaList([StopEachItemOnItsFirstRow(stop, len(prompts))])
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
    return [decode_answer(processor, _strip_padding(row, pad_id), generation) for row in rows]
