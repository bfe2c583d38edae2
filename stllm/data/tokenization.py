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

    def decode(self, ids: list[int], skip_special_tokens: bool = True, *, original: bool = False) -> str:
        """ids -> text. Default: the clean text (sentencepiece pieces only, special and added ids dropped).

        original=True: the text the original got from transformers 4.28's slow LlamaTokenizer `decode(ids)`
        (skip_special_tokens=False, spaces_between_special_tokens=True, no clean-up), see `_decode_original`.
        """
        if original:
            return self._decode_original(ids)
        special = {self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(), *self.added.values()}
        keep = [i for i in ids if 0 <= i < self.sp_size and not (skip_special_tokens and i in special)]
        return self.sp.decode(keep)

    def _decode_original(self, ids: list[int]) -> str:
        """docs/faithfulness.md Q35: transformers 4.28 `PreTrainedTokenizer._decode` + `LlamaTokenizer.
        convert_tokens_to_string` with the original's special-token setup (docs/original.md §3.1).

        - Each id becomes its piece (added ids such as `[PAD]` their text). Runs of pieces between added tokens
          are converted separately and the parts joined with " " (spaces_between_special_tokens=True).
        - Inside a run, a piece equal to one of the special-token *strings* (bos, eos, unk, pad: `</s>` and
          `[PAD]` for the InstructBLIP base, whose unk and bos were reassigned to `</s>`) is appended as text;
          before it, unless it is the run's first piece or follows another special piece, a single " " is
          added *in front of* the pieces decoded since the last special piece (so "x.</s>" gets no space).
        - Any other piece, `<unk>` (id 0) and `<s>` (id 1) included once they are no longer the special strings,
          goes through sentencepiece: `<unk>` renders as " \u2047 ", `<s>` as nothing.
        - No clean-up of spaces before punctuation (clean_up_tokenization_spaces=False for LlamaTokenizer).
        """
        specials = {self.bos_token, self.eos_token, self.unk_token, self.pad_token}
        added_by_id = {i: t for t, i in self.added.items()}
        parts: list[str] = []
        run: list[str] = []
        for i in ids:
            if i in added_by_id:
                if run:
                    parts.append(self._pieces_to_string(run, specials))
                    run = []
                parts.append(added_by_id[i])
            else:
                run.append(self.sp.id_to_piece(int(i)))
        if run:
            parts.append(self._pieces_to_string(run, specials))
        return " ".join(parts)

    def _pieces_to_string(self, pieces: list[str], specials: set[str]) -> str:
        """4.28 `LlamaTokenizer.convert_tokens_to_string` on one run of pieces (see `_decode_original`)."""
        out, pending, prev_special = "", [], False
        for k, piece in enumerate(pieces):
            if piece in specials:
                if not prev_special and k != 0:
                    out += " "
                out += self.sp.decode(pending) + piece
                pending, prev_special = [], True
            else:
                pending.append(piece)
                prev_special = False
        return out + self.sp.decode(pending)

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
