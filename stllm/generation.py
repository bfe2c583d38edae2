"""Decoding settings and the original's text rules for generated answers (no torch: `score` and configs use them).

docs/original.md §7.0: the returned ids lose a leading id 0 and then a leading id 1; the decoded text is cut
before the first "###" and after the last "Assistant:", then stripped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class GenerationConfig:
    """Decoding settings handed to model.generate (docs/original.md §7.5)."""

    num_beams: int = 1
    do_sample: bool = False
    max_new_tokens: int = 100
    min_length: int = 1
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0  # docs/faithfulness.md Q26: the chat path forces 1.5 (VCGBench/QA YAMLs)
    length_penalty: float = 1.0
    max_length: int = 0  # docs/faithfulness.md Q7: 2000 for VCGBench/QA; 0 = no context budget
    # docs/faithfulness.md Q7 [KEEP]: cut the embedded prompt from the left to max_length - max_new_tokens
    keep_left_truncation: bool = True
    # docs/faithfulness.md Q34 [KEEP]: transformers 4.28 (the original's pin) started generation from the ids
    # [[bos_token_id]] of the LLM's config (1 = "<s>" in Vicuna's config.json, not the tokenizer's "</s>"): the
    # repetition penalty also hits that id at every step and the returned ids open with it. False = transformers 5
    # (generated ids only).
    bos_placeholder: bool = True
    bos_placeholder_id: int = 1
    # docs/faithfulness.md Q35 [KEEP]: benchmark predictions keep the original's decoded text (special tokens such as
    # a final "</s>" rendered as text); the cleaned text is stored beside it. False: predictions hold the clean text.
    original_text: bool = True

    def kwargs(self) -> dict[str, Any]:
        """-> keyword arguments of model.generate (temperature/top_p only when sampling: inactive otherwise)."""
        out: dict[str, Any] = dict(
            num_beams=self.num_beams,
            do_sample=self.do_sample,
            max_new_tokens=self.max_new_tokens,
            min_length=self.min_length,
            repetition_penalty=self.repetition_penalty,
            length_penalty=self.length_penalty,
        )
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        return out

    def describe(self) -> dict[str, Any]:
        """Plain dict for run_info.json / results.json, with a one-word sampling rule."""
        d = asdict(self)
        d["rule"] = "sample" if self.do_sample else ("beam" if self.num_beams > 1 else "greedy")
        return d


def strip_leading_special(ids: Sequence[int], placeholder: int | None = None) -> list[int]:
    """docs/original.md §7.0: drop a leading id 0 (<unk>), then a leading id 1 (<s>), as the original's answer().

    `placeholder`: the id transformers 4.28 put in front of the new ids (docs/faithfulness.md Q34); the rule then
    runs on [placeholder] + ids, as it did in the original, so a generated leading 0 or 1 is kept.
    """
    out = ([placeholder] if placeholder is not None else []) + list(ids)
    if out and out[0] == 0:
        out = out[1:]
    if out and out[0] == 1:
        out = out[1:]
    return out


def postprocess(text: str) -> str:
    """Decoded new tokens -> answer (§7.0): before the first "###", after the last "Assistant:", stripped."""
    text = text.split("###")[0]
    text = text.split("Assistant:")[-1]
    return text.strip()
