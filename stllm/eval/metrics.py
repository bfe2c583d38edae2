"""Prediction records (+ judge verdicts) -> benchmark metrics: MVBench/TVBench option matching (docs/original.md §7.2),
VCGBench five judged scores (docs/original.md §7.3), QA judged accuracy and mean score (docs/original.md §7.4).

Pure functions: no I/O and no HTTP here (stllm.eval.score does those).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from stllm.eval.config import JudgeConfig

# VCGBench question file -> judged aspects (docs/original.md §7.3: generic_qa feeds correctness, detail and context)
VCG_ASPECTS: dict[str, tuple[str, ...]] = {
    "generic": ("correctness", "detail", "context"),
    "temporal": ("temporal",),
    "consistency": ("consistency",),
}
VCG_ORDER = ("correctness", "detail", "context", "temporal", "consistency")
_STRICT = re.compile(r"\(([A-Za-z])\)(?=$|[\s.,:;])")


def check_ans(pred: str, gt: str) -> bool:
    """The original's loose match (mv_bench.py check_ans, docs/original.md §7.2, Q8 [KEEP]): lower-case, split on ' ',
    compare
    first words: pred's (dots removed) is a substring of gt's, or gt's is a substring of pred's.
    So "(a", "(a)", "(a).", "(a)xyz" and a bare "(" all match "(a) ..."."""
    pred_option = pred.lower().split(" ")[0]
    gt_option = gt.lower().split(" ")[0]
    return pred_option.replace(".", "") in gt_option or gt_option in pred_option


def option_letter(text: str) -> Optional[str]:
    """Strict reading: the text must open with "(X)" followed by the end, a space or punctuation -> "X"."""
    m = _STRICT.match(text.strip())
    return m.group(1).upper() if m else None


def check_ans_strict(pred: str, gt: str) -> bool:
    """Strict variant (Q8 fix, reported beside the loose one): the same option letter, "(X)" exactly."""
    p, g = option_letter(pred), option_letter(gt)
    return p is not None and p == g


def _pct(num: float, den: float) -> Optional[float]:
    return 100.0 * num / den if den else None


def score_mcqa(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall accuracy (%), loose and strict. "total_acc" = correct/total over all answered items
    (the original's "Total Acc"), "macro_acc" = mean of the task accuracies; item errors are counted, not scored."""
    tasks: dict[str, dict[str, Any]] = {}
    errors = 0
    for rec in records:
        if rec.get("error"):
            errors += 1
            continue
        t = tasks.setdefault(rec["task"], {"correct": 0, "strict_correct": 0, "total": 0})
        t["total"] += 1
        t["correct"] += check_ans(rec["pred"], rec["answer"])
        t["strict_correct"] += check_ans_strict(rec["pred"], rec["answer"])
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
        if rec.get("error"):
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


def aggregate_scores(verdicts: Iterable[tuple[str, Optional[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
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


def score_vcgbench(verdicts: Iterable[tuple[str, Optional[dict[str, Any]]]], item_errors: int = 0) -> dict[str, Any]:
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


def score_open_qa(verdicts: Iterable[Optional[dict[str, Any]]], item_errors: int = 0) -> dict[str, Any]:
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
