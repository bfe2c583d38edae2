"""Prediction records (+ judge verdicts) -> benchmark metrics: MVBench/TVBench option matching (docs/original.md §7.2),
VCGBench five judged scores (docs/original.md §7.3), QA judged accuracy and mean score (docs/original.md §7.4).

Pure functions: no I/O and no HTTP here (stllm.eval.score does those).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from stllm.eval.config import JudgeConfig

# VCGBench question file -> judged aspects (docs/original.md §7.3: generic_qa feeds correctness, detail and context)
VCG_ASPECTS: dict[str, tuple[str, ...]] = {
    "generic": ("correctness", "detail", "context"),
    "temporal": ("temporal",),
    "consistency": ("consistency",),
}
VCG_ORDER = ("correctness", "detail", "context", "temporal", "consistency")
_STRICT = re.compile(r"\(([A-Za-z])\)(?=$|[\s.,:;])")


class AnswerFormatError(ValueError):
    """An item whose ground truth the original's check_ans could not score (docs/faithfulness.md Q36): an item
    error, counted and reported by the scorer, never scored. The message names the ground truth."""


def check_ans(pred: str, gt: str) -> bool:
    """The original's loose match (mv_bench.py check_ans, docs/original.md §7.2, Q8 [KEEP]): lower-case, split on ' ',
    compare
    first words: pred's (dots removed) is a substring of gt's, or gt's is a substring of pred's.
    So "(a", "(a)", "(a).", "(a)xyz" and a bare "(" all match "(a) ...".

    Raises AnswerFormatError where the original raised IndexError (docs/faithfulness.md Q36): a ground truth with
    nothing after its first word (e.g. "(A)" or "(A) "), whose empty `gt_content[-1]` the original indexed."""
    gt_words = gt.lower().split(" ")
    if not " ".join(gt_words[1:]):
        raise AnswerFormatError(f"ground truth {gt!r} has no text after its option (the original raised IndexError)")
    pred_option = pred.lower().split(" ")[0]
    gt_option = gt_words[0]
    return pred_option.replace(".", "") in gt_option or gt_option in pred_option


def record_error(rec: dict[str, Any]) -> str | None:
    """Why a prediction record is not scored: a phase-1 error (unreadable video) or an item error found by the reader
    (extra["item_error"], e.g. an MVBench window whose end lies before its start); None for a scorable record."""
    extra = rec.get("extra")
    return rec.get("error") or (extra.get("item_error") if isinstance(extra, dict) else None) or None


def option_letter(text: str) -> str | None:
    """Strict reading: the text must open with "(X)", the option letter in parentheses in either case, followed by
    the end, a space or punctuation -> "X" (upper case). "(b)" is read as "B": the case carries no meaning, while
    "(", "(b", "b)" and "(b)xyz" (accepted by the loose match) are not options in this form."""
    m = _STRICT.match(text.strip())
    return m.group(1).upper() if m else None


def check_ans_strict(pred: str, gt: str) -> bool:
    """Strict variant (Q8 fix, reported beside the loose one): the same option letter, "(X)" exactly."""
    p, g = option_letter(pred), option_letter(gt)
    return p is not None and p == g


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def score_mcqa(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall accuracy (%), loose and strict. "total_acc" = correct/total over all answered items
    (the original's "Total Acc"), "macro_acc" = mean of the task accuracies; item errors are counted, not scored."""
    tasks: dict[str, dict[str, Any]] = {}
    errors = 0
    unscorable: list[str] = []
    for rec in records:
        if record_error(rec):
            errors += 1
            continue
        try:  # loose: the text the original matched; strict: the text without special tokens (Q8, Q35)
            loose = check_ans(rec["pred"], rec["answer"])
        except AnswerFormatError as err:  # Q36: never scored as correct, counted as an item error
            errors += 1
            unscorable.append(f"{rec.get('id')}: {err}")
            continue
        t = tasks.setdefault(rec["task"], {"correct": 0, "strict_correct": 0, "total": 0})
        t["total"] += 1
        t["correct"] += loose
        t["strict_correct"] += check_ans_strict(rec.get("pred_clean", rec["pred"]), rec["answer"])
    for t in tasks.values():
        t["acc"] = _pct(t["correct"], t["total"])
        t["strict_acc"] = _pct(t["strict_correct"], t["total"])
    n = sum(t["total"] for t in tasks.values())
    accs = [t["acc"] for t in tasks.values()]
    strict_accs = [t["strict_acc"] for t in tasks.values()]
    return {
        "tasks": tasks,
        "total_acc": _pct(sum(t["correct"] for t in tasks.values()), n),
        "macro_acc": sum(accs) / len(accs) if accs else None,
        "strict_total_acc": _pct(sum(t["strict_correct"] for t in tasks.values()), n),
        "strict_macro_acc": sum(strict_accs) / len(strict_accs) if strict_accs else None,
        "answered": n,
        "item_errors": errors,
        "unscorable_ground_truth": unscorable[:100],
    }


def judge_requests(
    records: Sequence[dict[str, Any]], bench_type: str, judge: JudgeConfig
) -> list[tuple[int, str, dict[str, str]]]:
    """(record position, aspect, placeholder values) for every judge call the benchmark needs (errors skipped).

    VCGBench consistency: question2 = Q1 when judge.consistency_judge_q1_twice (docs/faithfulness.md Q9 [KEEP]), else
    Q2.
    """
    out = []
    for pos, rec in enumerate(records):
        if record_error(rec):
            continue
        if bench_type == "open_qa":
            out.append((pos, "qa", {"question": rec["question"], "answer": rec["answer"], "pred": rec["pred"]}))
        elif bench_type == "vcgbench":
            for aspect in VCG_ASPECTS.get(rec["task"], ()):
                if aspect == "consistency":
                    q2 = rec["question"] if judge.consistency_judge_q1_twice else rec["extra"]["question2"]
                    values = {
                        "question1": rec["question"],
                        "question2": q2,
                        "answer": rec["answer"],
                        "pred1": rec["pred"],
                        "pred2": rec.get("pred2", ""),
                    }
                else:
                    values = {"question": rec["question"], "answer": rec["answer"], "pred": rec["pred"]}
                out.append((pos, aspect, values))
    return out


_LOOSE_LETTER = re.compile(r"^\(?([A-Za-z])(?![A-Za-z])")


def degenerate_predictions(records: Iterable[dict[str, Any]], mcqa: bool) -> dict[str, Any]:
    """Predictions that carry no answer, counted: a broken model (NaN weights answering "(" to everything) scores
    100% under the original's loose matching (docs/faithfulness.md Q8), so these counts are reported beside every
    score and flagged.

    -> {"answered", "empty" (nothing, or MVBench's bare "(" prefix), "no_option_letter" (mcqa: no letter right after
    the "(", e.g. "(walking"), "most_common" (the most frequent answer, normalised), "most_common_count",
    "identical" (every answered item has that same answer while the right answers differ), "flagged", "summary"}."""
    answered = empty = no_letter = 0
    answers: dict[str, int] = {}
    truths: set[str] = set()
    for rec in records:
        if record_error(rec):
            continue
        answered += 1
        text = str(rec.get("pred") or "").strip()
        letter = _LOOSE_LETTER.match(text) if mcqa else None
        if text in ("", "("):
            empty += 1
        elif mcqa and letter is None:
            no_letter += 1
        norm = letter.group(1).upper() if letter else text.lower()
        answers[norm] = answers.get(norm, 0) + 1
        truths.add(str(rec.get("answer", "")).split(" ")[0].lower() if mcqa else str(rec.get("answer", "")))
    top, top_n = max(answers.items(), key=lambda kv: kv[1]) if answers else ("", 0)
    identical = answered >= 2 and top_n == answered and len(truths) > 1
    problems = []
    if empty:
        problems.append(f"{empty} of {answered} empty" + (' (only "(")' if mcqa else ""))
    if no_letter:
        problems.append(f"{no_letter} of {answered} without an option letter")
    if identical:
        problems.append(f"all {answered} identical ({top!r})")
    summary = ""
    if problems:
        summary = "degenerate predictions: " + ", ".join(problems)
        if mcqa:
            summary += "; the loose (original) accuracy counts such answers as correct: trust the strict one"
    return {
        "answered": answered,
        "empty": empty,
        "no_option_letter": no_letter,
        "most_common": top,
        "most_common_count": top_n,
        "identical": identical,
        "flagged": bool(problems),
        "summary": summary,
    }


def aggregate_scores(verdicts: Iterable[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """(aspect, parsed verdict or None if the judge failed) -> per aspect: mean of int(score) over judged items,
    judged count, failure count (failures are excluded from the mean, docs/faithfulness.md Q33 fix: never scored as
    0)."""
    out: dict[str, dict[str, Any]] = {}
    for aspect, result in verdicts:
        a = out.setdefault(aspect, {"score_sum": 0, "judged": 0, "judge_failures": 0})
        if result is None:
            a["judge_failures"] += 1
        else:
            a["score_sum"] += int(result["score"])
            a["judged"] += 1
    for a in out.values():
        a["score"] = a["score_sum"] / a["judged"] if a["judged"] else None
    return out


def score_vcgbench(verdicts: Iterable[tuple[str, dict[str, Any] | None]], item_errors: int = 0) -> dict[str, Any]:
    """Five aspect means (docs/original.md §7.3) and their mean (over the aspects that have a score)."""
    aspects = aggregate_scores(verdicts)
    ordered = {k: aspects[k] for k in VCG_ORDER if k in aspects}
    scores = [a["score"] for a in ordered.values() if a["score"] is not None]
    return {
        "aspects": ordered,
        "mean": sum(scores) / len(scores) if scores else None,
        "judge_failures": sum(a["judge_failures"] for a in ordered.values()),
        "item_errors": item_errors,
    }


def score_open_qa(verdicts: Iterable[dict[str, Any] | None], item_errors: int = 0) -> dict[str, Any]:
    """docs/original.md §7.4 (evaluate_activitynet_qa.py): "yes" in pred.lower() -> yes, elif "no" in ... -> no;
    accuracy = yes / (yes + no) (reported in %); average score = score_sum / count, count including items whose
    pred is neither. Judge failures are excluded from both and counted."""
    yes = no = count = score_sum = failures = 0
    for result in verdicts:
        if result is None:
            failures += 1
            continue
        count += 1
        score_sum += int(result["score"])
        pred = str(result["pred"]).lower()
        if "yes" in pred:
            yes += 1
        elif "no" in pred:
            no += 1
    return {
        "accuracy": _pct(yes, yes + no),
        "score": score_sum / count if count else None,
        "yes": yes,
        "no": no,
        "judged": count,
        "judge_failures": failures,
        "item_errors": item_errors,
    }
