"""Question + protocol settings -> exact model prompt strings; generated text -> prediction (docs/original.md §7.0,
7.2-7.4).

The prompt strings carry one VIDEO_PLACEHOLDER ("<ImageHere>") where the visual tokens go; the processor expands it and
places the BOS (`</s>` right after the video for the InstructBLIP base, docs/original.md §3.1/3.3, Q13).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stllm.data.processor import VIDEO_PLACEHOLDER
from stllm.eval.config import PromptConfig

logger = logging.getLogger(__name__)

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def mcqa_question(question: str, candidates: Sequence[str], answer: str) -> tuple[str, str]:
    """MVBench qa_template (docs/original.md §7.2): -> ("Question: q\\nOptions:\\n(A) c0\\n(B) c1", "(B) answer").

    The trailing newline is stripped. An answer that is not among the candidates gets the letter chr(ord('A') - 1)
    = "@" exactly as the original (answer_idx = -1), so it can never be matched by a strict option letter.
    """
    text = f"Question: {question}\nOptions:\n"
    answer_idx = -1
    for idx, cand in enumerate(candidates):
        text += f"({chr(ord('A') + idx)}) {cand}\n"
        if cand == answer:
            answer_idx = idx
    if answer_idx < 0:
        logger.warning("answer %r is not among the candidates of question %r", answer, question)
    return text.rstrip(), f"({chr(ord('A') + answer_idx)}) {answer}"


def build_prompt(question: str, cfg: PromptConfig) -> str:
    """One question -> the prompt string handed to processor.build_prompt_ids (contains VIDEO_PLACEHOLDER once).

    style "mvbench" (ask_simple path, docs/original.md §7.2):
        <video> "###Human: " + (S if use_system) + question + suffix + "\\n###Assistant: " + answer_prefix
    style "chat" (InstructBLIP base, Chat.get_context_emb_sim, docs/original.md §7.3/7.4):
        <video> (S if use_system else "") + "###Human: " + question + " ###Assistant: " + answer_prefix
        (answer_prefix is "" in the VcgBench/QA protocols; the quickstart's synthetic benchmark uses it to ask
        multiple-choice questions in the training prompt format of docs/original.md §3.2)
    style "minigpt4" (MiniGPT-4 base, Chat.get_context_emb, docs/original.md §7.3, Q32: no space before ###Assistant):
        S_minigpt4 + "###Human: <Video>" <video> "</Video> " + question + "###Assistant: "
    """
    if cfg.style == "mvbench":
        # mvbench_conversation.get_prompt2 keeps the part after "</Video>\n": the human turn text ends with "\n"
        # (ask() appends it) and the assistant turn is "Assistant: " + answer_prefix with no separator after it.
        body = (cfg.system if cfg.use_system else "") + question + cfg.question_suffix
        return f"{VIDEO_PLACEHOLDER}###Human: {body}\n###Assistant: {cfg.answer_prefix}"
    if cfg.style == "chat":
        system = cfg.system if cfg.use_system else ""
        return f"{VIDEO_PLACEHOLDER}{system}###Human: {question} ###Assistant: {cfg.answer_prefix}"
    if cfg.style == "minigpt4":
        system = cfg.minigpt4_system if cfg.use_system else ""
        return f"{system}###Human: <Video>{VIDEO_PLACEHOLDER}</Video> {question}###Assistant: "
    raise ValueError(f"unknown prompt style {cfg.style!r}")


def mcqa_prediction(answer_text: str, cfg: PromptConfig) -> str:
    """MVBench (docs/original.md §7.2, mv_bench.py:280): return_prefix + first line of the stripped answer."""
    text = answer_text.strip()
    if cfg.first_line_only:
        text = text.split("\n")[0]
    return cfg.return_prefix + text
