"""Text -> token ids exactly as the original's tokenizers produced them (docs/original.md §3.1, 3.3).

The original used transformers 4.28's *slow* `LlamaTokenizer` (sentencepiece, legacy mode): the text is split
at special tokens, and every other chunk is encoded by sentencepiece on its own (so each chunk gets
sentencepiece's dummy "▁" prefix). transformers 5 only has the fast tokenizer, whose ids can differ, so the
LLM side here calls sentencepiece directly. The Q-Former side is BERT WordPiece (transformers' BertTokenizer).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import sentencepiece as spm
from transformers import BertTokenizer


class LlamaSentencePieceTokenizer:
    """A sentencepiece `tokenizer.model` plus ST-LLM's special-token setup (docs/original.md §3.1).

    InstructBLIP-base recipes: `[PAD]` appended as a new id (32000 for Vicuna), BOS = UNK = EOS = `</s>`.
    MiniGPT-4-base recipes: no new id, pad = the id of "$$" (or unk), BOS `<s>`.
    """

    SPECIAL_PIECES = ("<unk>", "<s>", "</s>")

    def __init__(
        self,
        model_file: str | Path,
        *,
        pad_token: str = "[PAD]",
        add_pad_token: bool = True,
        bos_token: str = "</s>",
        eos_token: str = "</s>",
        unk_token: str = "</s>",
    ) -> None:
        self.model_file = str(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.model_file)
        self.sp_size = self.sp.get_piece_size()
        self.added: dict[str, int] = {}
        if add_pad_token:
            self.added[pad_token] = self.sp_size
        self.pad_token, self.bos_token, self.eos_token, self.unk_token = pad_token, bos_token, eos_token, unk_token
        specials = [t for t in self.SPECIAL_PIECES if self.sp.piece_to_id(t) != self.sp.unk_id() or t == "<unk>"]
        self._split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(set(specials) | set(self.added), key=len, reverse=True)) + ")"
        )

    def __len__(self) -> int:
        return self.sp_size + len(self.added)

    def token_to_id(self, token: str) -> int:
        if token in self.added:
            return self.added[token]
        return self.sp.piece_to_id(token)

    @property
    def pad_token_id(self) -> int:
        return self.token_to_id(self.pad_token)

    @property
    def bos_token_id(self) -> int:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int:
        return self.token_to_id(self.eos_token)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Slow-tokenizer semantics: split at special tokens, sentencepiece-encode each other chunk separately."""
        ids: list[int] = [self.bos_token_id] if add_bos else []
        for chunk in self._split.split(text):
            if not chunk:
                continue
            if chunk in self.added or chunk in self.SPECIAL_PIECES:
                ids.append(self.token_to_id(chunk))
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        special = {self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), *self.added.values()}
        keep = [i for i in ids if 0 <= i < self.sp_size and not (skip_special_tokens and i in special)]
        return self.sp.decode(keep)

    def piece_id(self, piece: str) -> int | None:
        """Id of a single sentencepiece piece, None if it is not in the vocabulary."""
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != "<unk>" else i

    def save(self, directory: str | Path) -> dict:
        shutil.copyfile(self.model_file, Path(directory) / "tokenizer.model")
        return {
            "pad_token": self.pad_token,
            "add_pad_token": bool(self.added),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
        }


def load_qformer_tokenizer(vocab_dir: str | Path, max_length: int = 256) -> BertTokenizer:
    """bert-base-uncased WordPiece + `[DEC]` as BOS, left truncation (docs/original.md §1.4)."""
    tok = BertTokenizer.from_pretrained(str(vocab_dir), do_lower_case=True)
    if tok.bos_token != "[DEC]":
        tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.truncation_side = "left"
    tok.model_max_length = max_length
    return tok


def save_qformer_tokenizer(tok: BertTokenizer, directory: str | Path) -> None:
    """Write vocab.txt (+ the [DEC] token) so `load_qformer_tokenizer` rebuilds the same ids."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    base = [t for t, i in vocab if t != "[DEC]"]
    (directory / "vocab.txt").write_text("\n".join(base) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"})
    )
