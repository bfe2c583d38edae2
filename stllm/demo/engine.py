"""(video file, questions) -> streamed multi-turn answers: the chat state shared by demo.py and demo_gradio.py.

One `ChatEngine` holds the model and processor (generation serialised by a lock); many `Chat` sessions hold a
conversation each: the template (docs/original.md §7.3), the video encoded once, and the history.

Differences from the original demos (docs/original.md §8), each with a switch in `ChatSettings` that restores the
original:
- multi-turn: the prompt holds every previous turn (the original's `get_context_emb_sim` used only the first
  human message; `single_turn=True` reproduces that);
- the video is encoded once per upload (the original gradio demo re-encoded it for every question with the
  question as Q-Former text). The Q-Former text is the *first* question (as in evaluation, docs/faithfulness.md Q28),
  or the
  fixed `qformer_text` if set; later questions reuse the tokens, so the Q-Former does not see them. Set
  `reencode_per_question=True` for the original behaviour (slower: the vision tower runs on every question);
- no double wrapping of the question (docs/faithfulness.md Q12 [FIX]; `double_wrap=True` reproduces it);
- repetition penalty 1.5 as the original forced it (docs/faithfulness.md Q26 [KEEP]).
The single-turn prompt is byte-identical to evaluation's (`stllm.eval.prompts.build_prompt`); turn k > 1 appends
`{answer}###Human: {q} ###Assistant: ` (MiniGPT-4 base: no space before `###Assistant`, docs/faithfulness.md Q32).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from stllm.data.processor import StllmProcessor
from stllm.data.sampling import FrameSampling
from stllm.data.transforms import EvalTransform
from stllm.data.video import read_clip
from stllm.eval.config import PromptConfig
from stllm.eval.prompts import build_prompt
from stllm.generation import GenerationConfig, postprocess, strip_leading_special
from stllm.inference import generate_raw, load
from stllm.models.modeling import StllmForConditionalGeneration

logger = logging.getLogger(__name__)

# Protocol strings, word for word (CONV_instructblip_Vicuna0 / CONV_VIDEO_Vicuna0 of the original conversation.py;
# the same strings as configs/eval/vcgbench.yaml, a test keeps them equal)
SYSTEM_INSTRUCTBLIP = (
    "Carefully watch the video and pay attention to the cause and sequence of events, the detail "
    "and movement of objects, and the action and pose of persons. Based on your observations, "
    "give your answer that best addresses the question.\n"
)
SYSTEM_MINIGPT4 = (
    "Give the following video: <Video>VideoContent</Video>. You will be able to see the video once I "
    "provide it to you. Please answer my questions."
)


@dataclass
class ChatSettings:
    """Decoding and conversation settings of one chat session (defaults: the original CLI demo, docs/original.md
    §7.5/8)."""

    num_frames: int = 64
    num_beams: int = 5
    do_sample: bool = False
    temperature: float = 1.0  # acts only with do_sample=True (as in the original, docs/original.md §7.5)
    top_p: float = 0.9
    max_new_tokens: int = 300
    repetition_penalty: float = 1.5  # docs/faithfulness.md Q26 [KEEP]: forced in the original's chat path
    max_length: int = (
        2000  # docs/faithfulness.md Q7 context budget; older turns are dropped first, then the left cut applies
    )
    use_system: bool = True
    single_turn: bool = False  # True: only the current question, as the original's get_context_emb_sim
    double_wrap: bool = (
        False  # True: docs/faithfulness.md Q12, the question wrapped in "###Human: ... ###Assistant: " twice
    )
    reencode_per_question: bool = False  # True: the original gradio demo (Q-Former text = each question)
    qformer_text: str | None = None  # None: the first question; a string: fixed text, encoded at upload
    resize: str = "pil"  # EvalTransform resize ("pil" exact, "torch" faster)
    # text the assistant's turn starts with, shown in front of the answer (MVBench and the quickstart's models:
    # "Best option:(", docs/original.md §7.2); "" in the original demos
    answer_prefix: str = ""

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            max_length=self.max_length,
        )


def at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low (frames, beams, new tokens), else a one-line usage error (exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the smallest allowed value, {low}")
        return value

    return parse


def non_negative(text: str) -> float:
    """argparse type for --temperature: a number >= 0 (0 = greedy / beam search), as the chat's /temperature."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0 (0 = greedy / beam search)")
    return value


def positive(text: str) -> float:
    """argparse type for --repetition-penalty: a finite number > 0 (1 = no penalty)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0 (1 = no penalty)")
    return value


def partial_answer(text: str) -> str:
    """Decoded text so far -> what the answer will start with: docs/original.md §7.0's cut, holding back a possible '#'
    run."""
    cut = text.split("###")[0]
    if "###" not in text:
        cut = cut.rstrip("#")  # may become the "###" stop sequence with the next token
    return cut.split("Assistant:")[-1].lstrip().rstrip("\ufffd")  # an incomplete UTF-8 byte sequence


class TokenStreamer(BaseStreamer):
    """transformers streamer: new token ids (batch 1) -> cumulative partial answers on a queue.

    The first `put` is the prompt (empty when generating from embeddings) and is skipped. Each later token is
    appended and the whole answer is decoded again with the processor's sentencepiece tokenizer (cheap for a few
    hundred tokens, and correct for pieces that merge across tokens). The consumer iterates the streamer; the
    producer calls `close` (or `fail`) after `generate` has returned.
    """

    _END = object()

    def __init__(self, processor: StllmProcessor) -> None:
        self.processor = processor
        self.ids: list[int] = []
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self._last = ""

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if value.ndim > 1 and value.shape[0] != 1:
            raise ValueError("TokenStreamer supports batch size 1 only")
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = partial_answer(self.processor.decode(strip_leading_special(self.ids)))
        if text != self._last:
            self._last = text
            self.queue.put(text)

    def end(self) -> None:
        """Called by transformers when decoding stops; the queue is closed by `close` once the answer is cut."""

    def close(self) -> None:
        self.queue.put(self._END)

    def fail(self, err: BaseException) -> None:
        self.queue.put(err)

    def __iter__(self) -> Iterator[str]:
        while (item := self.queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


class ChatEngine:
    """One model + processor shared by every session; model calls are serialised by `lock`.

    `encode_count` counts vision-tower runs over all sessions (tests read it).
    """

    def __init__(self, model: StllmForConditionalGeneration, processor: StllmProcessor) -> None:
        self.model = model.eval()
        self.processor = processor
        self.lock = threading.Lock()
        self.encode_count = 0
        self.transform = EvalTransform(model.config.frame_size())

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype | None = "auto",
    ) -> ChatEngine:
        """A model folder -> engine, through the one inference path (stllm.inference.load)."""
        return cls(*load(model_dir, device, dtype))

    @property
    def uses_qformer_text(self) -> bool:
        return bool(self.model.config.qformer_text_input)

    def load_frames(self, path: str | Path, num_frames: int, resize: str = "pil") -> torch.Tensor:
        """Video file -> float (T, 3, S, S) with docs/original.md §7.1's frame rule and transform; MediaError if
        unreadable."""
        clip = read_clip(path, FrameSampling(num_frames=num_frames, mode="uniform_middle"))
        transform = self.transform if resize == self.transform.resize else EvalTransform(self.transform.size, resize)
        return transform(clip.frames)

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, qformer_text: str | None) -> torch.Tensor:
        """float (T, 3, S, S) + Q-Former text -> video tokens (1, L, D) on the model's device."""
        param = next(self.model.parameters())
        kwargs: dict[str, Any] = {}
        if self.uses_qformer_text:
            q = self.processor.qformer_inputs([qformer_text or ""])
            kwargs = {k: v.to(param.device) for k, v in q.items()}
        with self.lock:
            self.encode_count += 1
            return self.model.get_video_features(pixel_values[None].to(param.device, param.dtype), **kwargs)

    def prompt_length(self, prompt: str, num_frames: int) -> int:
        return len(self.processor.build_prompt_ids(prompt, num_frames))

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        video_embeds: torch.Tensor,
        num_frames: int,
        generation: GenerationConfig,
        streamer: TokenStreamer | None = None,
    ) -> str:
        """Prompt with one <ImageHere> + cached video tokens -> answer text, through evaluation's decoding path."""
        with self.lock:
            raw = generate_raw(
                self.model,
                self.processor,
                None,
                [prompt],
                None,
                generation,
                video_embeds=video_embeds,
                num_frames=num_frames,
                streamer=streamer,
            )
        return postprocess(raw[0])


def quiet_libraries() -> None:
    """For the demos: no weight-loading progress bar, and no warning about the intended docs/faithfulness.md Q26
    behaviour (the
    prompt goes in as embeddings, so the repetition penalty sees generated tokens only)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")


class Chat:
    """One conversation about one video: template, encoded video (once per upload) and history."""

    def __init__(self, engine: ChatEngine, settings: ChatSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or ChatSettings()
        self.history: list[tuple[str, str]] = []
        self.video_path: str | None = None
        self.pixel_values: torch.Tensor | None = None  # (T, 3, S, S)
        self.video_embeds: torch.Tensor | None = None  # (1, L, D)
        self.encode_count = 0
        style = "chat" if engine.uses_qformer_text else "minigpt4"
        self.prompt_config = PromptConfig(
            style=style,
            system=SYSTEM_INSTRUCTBLIP,
            minigpt4_system=SYSTEM_MINIGPT4,
            use_system=self.settings.use_system,
            answer_prefix=self.settings.answer_prefix if style == "chat" else "",
        )

    def __deepcopy__(self, memo: dict) -> Chat:
        # gradio may deep-copy session state; the engine (model) and the video tensors are shared, not copied
        new = copy.copy(self)
        new.history = list(self.history)
        new.settings = dataclasses.replace(self.settings)
        return new

    # ------------------------------------------------------------------------------------------------ video
    @property
    def frames(self) -> torch.Tensor:
        """The loaded video's frames (T, 3, S, S); RuntimeError before load_video."""
        if self.pixel_values is None:
            raise RuntimeError("no video loaded: call load_video(path) first")
        return self.pixel_values

    def load_video(self, path: str | Path) -> None:
        """Read and transform the frames (MediaError if unreadable); forget the conversation and old tokens."""
        self.pixel_values = self.engine.load_frames(path, self.settings.num_frames, self.settings.resize)
        self.video_path = str(path)
        self.video_embeds = None
        self.history = []
        if self.settings.qformer_text is not None or not self.engine.uses_qformer_text:
            self._encode(self.settings.qformer_text)

    def set_frames(self, num_frames: int) -> None:
        """Another frame count: the video is read again and re-encoded at the next question (history kept)."""
        if num_frames == self.settings.num_frames:
            return
        self.settings.num_frames = num_frames
        if self.video_path is not None:
            history = self.history
            self.load_video(self.video_path)
            self.history = history

    def reset(self) -> None:
        """Forget the conversation; the video and its tokens stay."""
        self.history = []

    def _encode(self, qformer_text: str | None) -> torch.Tensor:
        self.video_embeds = self.engine.encode(self.frames, qformer_text)
        self.encode_count += 1
        return self.video_embeds

    # ------------------------------------------------------------------------------------------------ prompt
    def _human(self, question: str) -> str:
        if self.settings.double_wrap and self.prompt_config.style == "chat":
            # docs/faithfulness.md Q12: the original demos passed this to ask()
            return f"###Human: {question} ###Assistant: "
        return question

    def build_prompt(self, question: str, history: list[tuple[str, str]] | None = None) -> str:
        """History + new question -> prompt string with one <ImageHere> (turn 1 = evaluation's prompt)."""
        history = [] if self.settings.single_turn else (self.history if history is None else history)
        turns = [q for q, _ in history] + [question]
        prompt = build_prompt(self._human(turns[0]), self.prompt_config)
        gap = " " if self.prompt_config.style == "chat" else ""  # docs/faithfulness.md Q32: MiniGPT-4 base has no space
        prefix = self.prompt_config.answer_prefix  # every assistant turn starts with it, as turn 1 does
        for (_, answer), q in zip(history, turns[1:]):
            prompt += f"{answer}###Human: {self._human(q)}{gap}###Assistant: {prefix}"
        return prompt

    def _fit_prompt(self, question: str) -> str:
        """Drop the oldest turns while the prompt + max_new_tokens exceeds max_length (docs/faithfulness.md Q7
        budget)."""
        history = list(self.history)
        s, t = self.settings, self.frames.shape[0]
        prompt = self.build_prompt(question, history)
        while history and s.max_length > 0 and self.engine.prompt_length(prompt, t) + s.max_new_tokens > s.max_length:
            history = history[1:]
            prompt = self.build_prompt(question, history)
            logger.info("context budget: dropped the oldest turn (%d left)", len(history))
        return prompt

    # ------------------------------------------------------------------------------------------------ answer
    def stream(self, question: str) -> Iterator[str]:
        """Question -> cumulative partial answers, the last one the final answer (added to the history).

        Beam search cannot stream in transformers: with num_beams > 1 the full answer comes at once. With an answer
        prefix, every yielded text starts with it (the history keeps the generated part: the prompt holds the prefix).
        """
        question = question.strip()
        if not question:
            raise ValueError("empty question")
        if self.pixel_values is None:
            raise RuntimeError("no video loaded: call load_video(path) first")
        video_embeds = self.video_embeds
        if video_embeds is None or self.settings.reencode_per_question:
            video_embeds = self._encode(question if self.settings.qformer_text is None else self.settings.qformer_text)
        prompt = self._fit_prompt(question)
        gen, t = self.settings.generation(), self.pixel_values.shape[0]
        if gen.num_beams > 1:
            answer = self.engine.generate(prompt, video_embeds, t, gen)
        else:
            streamer = TokenStreamer(self.engine.processor)
            result: dict[str, str] = {}

            def work() -> None:
                try:
                    result["answer"] = self.engine.generate(prompt, video_embeds, t, gen, streamer)
                except BaseException as err:  # surfaced in the consumer thread
                    streamer.fail(err)
                else:
                    streamer.close()

            threading.Thread(target=work, daemon=True, name="stllm-generate").start()
            prefix = self.prompt_config.answer_prefix
            for partial in streamer:
                yield prefix + partial
            answer = result["answer"]
        self.history.append((question, answer))
        yield self.prompt_config.answer_prefix + answer

    def ask(self, question: str) -> str:
        """Question -> final answer (non-streaming convenience)."""
        answer = ""
        for partial in self.stream(question):
            answer = partial
        return answer
