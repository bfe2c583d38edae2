"""(instruction, question, answer, frames) -> input_ids with video placeholders, labels, Q-Former ids (docs/original.md
§3).

Layouts (docs/original.md §3.3), with V = the video placeholder id repeated L = config.num_video_tokens(T) times:
  InstructBLIP base: [V x L][</s>]###Human: {i }{q} ###Assistant: {answer}</s>
  MiniGPT-4 base:    [<s>]{i }###Human: <Video>[V x L]</Video> {q} ###Assistant: {answer}###
Labels are -100 everywhere except the answer and its terminator. Batches are right-padded for training and
left-padded for generation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from stllm.data.tokenization import LlamaSentencePieceTokenizer, load_qformer_tokenizer, save_qformer_tokenizer

VIDEO_PLACEHOLDER = "<ImageHere>"  # where a prompt string takes the video tokens (the original's name for it)
PROCESSOR_FILE = "processor_config.json"


class ModelLayout(Protocol):
    """What the processor reads from the model's configuration (`StllmConfig` provides it; data never imports
    models, so the dependency is this protocol)."""

    num_query_tokens: int
    video_token_id: int
    video_input: str
    qformer_text_input: bool
    num_frames: int

    def num_video_tokens(self, num_frames: int, video_input: str | None = None) -> int: ...


@dataclass
class ProcessorSettings:
    """The processor's own settings (saved as processor_config.json). Everything that depends on the model
    (token counts, placeholder id, recipe base) is read from the model's config, never copied here."""

    max_txt_len: int = 256  # answer and Q-Former text truncation (docs/original.md §1.4, §3.3)
    end_sym: str = "###"  # answer terminator of the MiniGPT-4 base (§3.1)
    legacy_qformer_text_split: bool = False  # docs/faithfulness.md Q21: True = the original's string split


class StllmProcessor:
    """Tokenises ST-LLM prompts with the original's exact ids for one model configuration; pads batches."""

    def __init__(
        self,
        tokenizer: LlamaSentencePieceTokenizer,
        qformer_tokenizer: Any,
        config: ModelLayout,
        settings: ProcessorSettings | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.config = config
        self.settings = settings or ProcessorSettings()

    # ---------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_files(
        cls,
        config: ModelLayout,
        llama_model_file: str | Path,
        qformer_vocab_dir: str | Path,
        settings: ProcessorSettings | None = None,
    ) -> StllmProcessor:
        """A Llama sentencepiece `tokenizer.model` and a BERT `vocab.txt` folder -> processor (§3.1 setup)."""
        settings = settings or ProcessorSettings()
        if config.qformer_text_input:
            tok = LlamaSentencePieceTokenizer(llama_model_file)
        else:
            tok = LlamaSentencePieceTokenizer(
                llama_model_file,
                pad_token="$$",
                add_pad_token=False,
                bos_token="<s>",
                eos_token="</s>",
                unk_token="<unk>",
            )
        return cls(tok, load_qformer_tokenizer(qformer_vocab_dir, settings.max_txt_len), config, settings)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        special = self.tokenizer.save(directory)
        save_qformer_tokenizer(self.qformer_tokenizer, directory / "qformer_tokenizer")
        payload = {
            "settings": asdict(self.settings),
            "llama_special_tokens": special,
            "special_token_ids": {
                "bos": self.tokenizer.bos_token_id,
                "eos": self.tokenizer.eos_token_id,
                "pad": self.tokenizer.pad_token_id,
                "vocab_size": len(self.tokenizer),
            },
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(payload, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: ModelLayout) -> StllmProcessor:
        """The tokenizer files of a model folder, for the model whose config is `config`."""
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a converted stllm model directory "
                f"(run `python -m stllm convert` first)"
            )
        payload = json.loads(path.read_text())
        known = {f.name for f in fields(ProcessorSettings)}
        settings = ProcessorSettings(**{k: v for k, v in payload["settings"].items() if k in known})
        tok = LlamaSentencePieceTokenizer(directory / "tokenizer.model", **payload["llama_special_tokens"])
        qtok = load_qformer_tokenizer(directory / "qformer_tokenizer", settings.max_txt_len)
        return cls(tok, qtok, config, settings)

    # ---------------------------------------------------------------------------------------------- prompts
    def training_prompt(self, instruction: str, question: str, is_image: bool = False) -> str:
        """docs/original.md §3.2: the prompt string with one `<ImageHere>`, by recipe."""
        cur = instruction + " " if instruction else ""
        if self.config.qformer_text_input:
            return f"{VIDEO_PLACEHOLDER}###Human: {cur}{question} ###Assistant: "
        start, end = ("<Image>", "</Image>") if is_image else ("<Video>", "</Video>")
        return f"{cur}###Human: {start}{VIDEO_PLACEHOLDER}{end} {question} ###Assistant: "

    def qformer_text(self, instruction: str, question: str) -> str:
        """docs/original.md §3.2: "{i} {q}" (or q). Q21 [FIX]: built from the fields, not by splitting the prompt
        string."""
        if self.settings.legacy_qformer_text_split:
            prompt = f"###Human: {instruction + ' ' if instruction else ''}{question} ###Assistant: "
            return prompt.split("Human: ", 1)[1].split(" ###")[0]
        return f"{instruction} {question}" if instruction else question

    def build_prompt_ids(self, prompt: str, num_frames: int, video_input: str | None = None) -> list[int]:
        """A prompt with exactly one `<ImageHere>` -> ids with L video placeholders (docs/original.md §3.3 prompt_wrap).

        `video_input` overrides the model's mode for the placeholder count (docs/faithfulness.md Q1 legacy MVBench
        path).
        The text before the video is encoded without special tokens; the text after it with the BOS for the
        InstructBLIP base (so `</s>` sits right after the video tokens, docs/faithfulness.md Q13); the MiniGPT-4 base
        gets `<s>`
        at position 0 instead.
        """
        if prompt.count(VIDEO_PLACEHOLDER) != 1:
            raise ValueError(
                f"the prompt must contain exactly one {VIDEO_PLACEHOLDER}, got "
                f"{prompt.count(VIDEO_PLACEHOLDER)}: {prompt[:200]!r}"
            )
        before, after = prompt.split(VIDEO_PLACEHOLDER)
        c = self.config
        video = [c.video_token_id] * c.num_video_tokens(num_frames, video_input)
        ids = self.tokenizer.encode(before) + video + self.tokenizer.encode(after, add_bos=c.qformer_text_input)
        if not c.qformer_text_input:
            ids = [self.tokenizer.sp.bos_id()] + ids
        return ids

    def answer_ids(self, answer: str) -> list[int]:
        """docs/original.md §3.3 step 2: answer + terminator, no special tokens, cut to max_txt_len (may lose the
        terminator)."""
        term = self.tokenizer.eos_token if self.config.qformer_text_input else self.settings.end_sym
        return self.tokenizer.encode(answer + term)[: self.settings.max_txt_len]

    def training_example(
        self, instruction: str, question: str, answer: str, num_frames: int, is_image: bool = False
    ) -> dict[str, list[int]]:
        """One sample -> input_ids, labels (answer only) and unpadded Q-Former ids."""
        prompt_ids = self.build_prompt_ids(self.training_prompt(instruction, question, is_image), num_frames)
        ans = self.answer_ids(answer)
        out = {"input_ids": prompt_ids + ans, "labels": [-100] * len(prompt_ids) + ans}
        if self.config.qformer_text_input:
            out["qformer_input_ids"] = self.qformer_tokenizer(
                self.qformer_text(instruction, question), truncation=True, max_length=self.settings.max_txt_len
            )["input_ids"]
        return out

    def qformer_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """BERT ids, padding "longest", left truncation at max_txt_len (docs/original.md §1.4)."""
        enc = self.qformer_tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.settings.max_txt_len, return_tensors="pt"
        )
        return {"qformer_input_ids": enc["input_ids"], "qformer_attention_mask": enc["attention_mask"]}

    # -------------------------------------------------------------------------------------------- batching
    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-pad a training batch (docs/original.md §3.3): pad id / attention 0 / label -100 after each sequence."""
        n = max(len(f["input_ids"]) for f in features)
        pad = self.tokenizer.pad_token_id
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (n - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (n - len(f["input_ids"])) for f in features]
            ),
            "labels": torch.tensor([f["labels"] + [-100] * (n - len(f["labels"])) for f in features]),
        }
        if "pixel_values" in features[0]:
            shapes = {tuple(f["pixel_values"].shape) for f in features}
            if len(shapes) != 1:
                raise ValueError(f"all clips of a batch need the same shape (frames, 3, S, S), got {sorted(shapes)}")
            batch["pixel_values"] = torch.stack([f["pixel_values"] for f in features])  # (B, T, 3, S, S)
        if "qformer_input_ids" in features[0]:
            m = max(len(f["qformer_input_ids"]) for f in features)
            qpad = self.qformer_tokenizer.pad_token_id
            batch["qformer_input_ids"] = torch.tensor(
                [f["qformer_input_ids"] + [qpad] * (m - len(f["qformer_input_ids"])) for f in features]
            )
            batch["qformer_attention_mask"] = torch.tensor(
                [[1] * len(f["qformer_input_ids"]) + [0] * (m - len(f["qformer_input_ids"])) for f in features]
            )
        return batch

    __call__ = collate

    def pad_left(self, sequences: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad prompts for batched generation -> input_ids, attention_mask (B, N)."""
        n = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([[pad] * (n - len(s)) + list(s) for s in sequences]),
            "attention_mask": torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in sequences]),
        }

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    @property
    def stop_token_sequences(self) -> list[list[int]]:
        """docs/original.md §7.0: "▁###" (835 in Vicuna) and "##" + "#" (2277, 29937); the pieces present in this
        vocab."""
        t = self.tokenizer
        seqs = []
        if (i := t.piece_id("▁###")) is not None:
            seqs.append([i])
        elif (i := t.piece_id("###")) is not None:  # small vocabularies without "▁###" (tests, quickstart)
            seqs.append([i])
        a, b = t.piece_id("##"), t.piece_id("#")
        if a is not None and b is not None:
            seqs.append([a, b])
        return seqs
