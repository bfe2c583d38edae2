"""Offline tiny assets -> a sentencepiece Llama tokenizer, a WordPiece BERT vocabulary and a tiny model directory.

Nothing is downloaded: the tokenizers are trained in-process on a small built-in corpus (plus any extra text),
so tests, demos and the quickstart run on a fresh machine without model hubs.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch

from stllm.data.processor import StllmProcessor
from stllm.models.configuration import preset_config
from stllm.models.modeling import StllmForConditionalGeneration

_WORDS = (
    "the a an man woman dog cat person people car ball square circle red green blue yellow white black "
    "moves walks runs jumps falls enters leaves appears first then after before left right up down "
    "video frame scene kitchen street room table cooking dinner watch question answer option best "
    "what is doing in describe detail why how many who where when which does happen end start object "
    "color colour direction motion leaving entering only give carefully pay attention cause sequence "
    "events movement action pose persons based observations select accurately addresses yes no"
).split()


def corpus_lines(extra: Iterable[str] = ()) -> list[str]:
    """A deterministic training corpus for the tiny tokenizers (the prompt templates included)."""
    lines = [
        "###Human: What is the man doing in the video? ###Assistant: The man is cooking dinner.",
        "Question: Which way does the square move?\nOptions:\n(A) left\n(B) right\nBest option:(A) left",
        "<Video></Video> Describe the video in detail. ### Assistant: Human:",
    ]
    words = _WORDS
    for i in range(400):
        k = 3 + i % 9
        lines.append(" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(k)) + ("?" if i % 3 else "."))
    lines.extend(extra)
    return lines


def train_llama_tokenizer(path: str | Path, extra_text: Iterable[str] = (), vocab_size: int = 320) -> Path:
    """Train a Llama-style BPE sentencepiece model (byte fallback, unk/bos/eos = 0/1/2) -> `path`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines(extra_text)),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        character_coverage=1.0,
        user_defined_symbols=["###", "##", "#"],
        minloglevel=2,
    )
    path = Path(path)
    path.write_bytes(model.getvalue())
    return path


def write_bert_vocab(directory: str | Path, extra_text: Iterable[str] = ()) -> Path:
    """A small uncased WordPiece vocabulary ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4) -> directory/vocab.txt."""
    words = sorted({w for line in corpus_lines(extra_text) for w in re.findall(r"[a-z]+", line.lower())})
    chars = sorted({c for w in words for c in w} | set("0123456789"))
    punct = list("()?.,:!'\"-#<>/")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + punct + chars + ["##" + c for c in chars] + words
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return directory


def build_tiny_model_dir(
    directory: str | Path,
    seed: int = 0,
    extra_text: Iterable[str] = (),
    vision: dict | None = None,
    text: dict | None = None,
    vocab_size: int = 320,
    **config_overrides,
) -> Path:
    """Train tokenizers, build the `tiny` preset sized to them, save model + processor -> directory.

    `vision` / `text` override vision_config / text_config fields (e.g. image_size, hidden_size); `vocab_size` is
    the sentencepiece vocabulary's; other keyword arguments are top-level StllmConfig fields.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra_text = list(extra_text)
    assets = directory / "_assets"
    assets.mkdir(exist_ok=True)
    sp_file = train_llama_tokenizer(assets / "tokenizer.model", extra_text, vocab_size)
    bert_dir = write_bert_vocab(assets / "bert", extra_text)
    cfg = preset_config("tiny")
    for key, value in config_overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown StllmConfig field {key!r}")
        setattr(cfg, key, value)
    processor = StllmProcessor.from_files(cfg, sp_file, bert_dir)
    cfg.text_config.vocab_size = len(processor.tokenizer)
    cfg.text_config.pad_token_id = processor.tokenizer.pad_token_id
    cfg.video_token_id = len(processor.tokenizer)
    cfg.qformer_config.vocab_size = len(processor.qformer_tokenizer)
    for sub, values in ((cfg.vision_config, vision), (cfg.text_config, text)):
        for key, value in (values or {}).items():
            if not hasattr(sub, key):
                raise ValueError(f"unknown {type(sub).__name__} field {key!r}")
            setattr(sub, key, value)
    cfg.validate_stllm()
    torch.manual_seed(seed)
    model = StllmForConditionalGeneration(cfg)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    """`python -m stllm tiny-model --out DIR`: a tiny random model + tokenizers, for trying the demos on a CPU."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stllm tiny-model", description=main.__doc__)
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video-input", choices=["all", "mean", "residual"], default="all")
    parser.add_argument("--btadapter", action="store_true", help="add the BT-Adapter branch")
    args = parser.parse_args(argv)
    out = build_tiny_model_dir(args.out, seed=args.seed, video_input=args.video_input, btadapter=args.btadapter)
    print(f"tiny model (random weights) written to {out}")
    return 0
