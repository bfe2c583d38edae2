"""`python -m stllm score PREDICTIONS [--judge-base-url URL --judge-model M] [key=value ...]`
-> results.json, results.md and a bar chart PNG beside the predictions (phase 2 of docs/design.md decision 8).

The protocol (benchmark type, judge prompts) comes from eval_config.yaml written by phase 1 beside the predictions;
key=value overrides apply on top (e.g. judge.temperature=0, judge.consistency_judge_q1_twice=false).

Exit status (docs/reliability.md, "Scoring and the judge"): 0 with results; 2 and one line for a bad input (no
predictions file, a record without its fields, a config error); 1 and a one-line summary when nothing could be
scored (every item an error, or every judge call failed), results still written with the counts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stllm import code_version
from stllm.config import ConfigError, config_to_dict, load_config
from stllm.errors import StllmError
from stllm.eval.config import EvalConfig, validate
from stllm.eval.judge import JudgeClient, build_messages
from stllm.eval.metrics import (
    degenerate_predictions,
    judge_requests,
    record_error,
    score_mcqa,
    score_open_qa,
    score_vcgbench,
)
from stllm.eval.records import read_records

logger = logging.getLogger(__name__)


class ScoreInputError(StllmError, ValueError):
    """A predictions file that cannot be scored (missing, empty, a record without the fields its benchmark needs)."""


# fields a scorable record must have, per benchmark type (records written by phase 1 always have them)
_RECORD_FIELDS = {"mcqa": ("task", "pred", "answer"), "vcgbench": ("task", "question", "answer", "pred")}
_RECORD_FIELDS["open_qa"] = ("question", "answer", "pred")


def check_records(records: list[dict[str, Any]], cfg: EvalConfig, path: Path) -> None:
    """Every scorable record has its benchmark's fields as text -> None; else ScoreInputError naming line and key."""
    for line, rec in enumerate(records, 1):
        if record_error(rec):
            continue
        for key in _RECORD_FIELDS[cfg.type]:
            if not isinstance(rec.get(key), str):
                raise ScoreInputError(
                    f"{path} record {line} (id {rec.get('id')!r}): field {key!r} missing or not text; "
                    f"was it written by `python -m stllm eval` with this benchmark's config ({cfg.benchmark})?"
                )
        if cfg.type == "vcgbench" and rec["task"] == "consistency" and not cfg.judge.consistency_judge_q1_twice:
            if not isinstance((rec.get("extra") or {}).get("question2"), str):
                raise ScoreInputError(f"{path} record {line} (id {rec.get('id')!r}): no extra.question2")


def describe_frames(frames: dict[str, Any]) -> str:
    """The frames rule of an eval config, in words (results.md)."""
    n, size = int(frames.get("num_frames", 0)), frames.get("size", 224)
    if frames.get("rule") == "mvbench":
        if n > 0:
            rule = f"MVBench get_index: {n} frames, segment midpoints of the clip (or of the item's start-end window)"
        else:
            rule = (
                "MVBench get_index, 1 frame per second of the clip (or of the item's start-end window), "
                f"floored and clamped to {frames.get('min_frames', 4)}-{frames.get('max_frames', 16)} frames"
            )
    else:
        rule = f"{n} frames, segment midpoints over the whole video"
    return f"{rule}; {size} px"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def judge_records(records: list[dict[str, Any]], cfg: EvalConfig, cache_dir: Path) -> tuple[list, JudgeClient]:
    """Every judge call of the benchmark -> [(record position, aspect, Verdict)], through the cached client."""
    requests = judge_requests(records, cfg.type, cfg.judge)
    missing = sorted({aspect for _, aspect, _ in requests} - set(cfg.judge.prompts))
    if missing:
        raise ConfigError(f"eval config has no judge prompt for {', '.join(missing)} (judge.prompts.<aspect>)")
    key = os.environ.get(cfg.judge.api_key_env)
    if not key:
        logger.warning("environment variable %s is not set: calling the judge without a key", cfg.judge.api_key_env)
    client = JudgeClient(cfg.judge, key, cache_dir)
    calls = [(build_messages(cfg.judge.prompts[a], v), cfg.judge.prompts[a].keys) for _, a, v in requests]
    verdicts = client.judge_many(calls, desc=f"judge {cfg.benchmark}")
    return [(pos, a, v) for (pos, a, _), v in zip(requests, verdicts)], client


def compute_metrics(
    records: list[dict[str, Any]], cfg: EvalConfig, cache_dir: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """-> (metrics, judge info or None); metrics["degenerate"] counts empty / degenerate predictions."""
    degenerate = degenerate_predictions(records, cfg.type == "mcqa")
    if cfg.type == "mcqa":
        return {**score_mcqa(records), "degenerate": degenerate}, None
    errors = sum(1 for r in records if record_error(r))
    judged, client = judge_records(records, cfg, cache_dir)
    if cfg.type == "vcgbench":
        metrics = score_vcgbench([(a, v.result) for _, a, v in judged], errors)
    else:
        metrics = score_open_qa([v.result for _, _, v in judged], errors)
    metrics["degenerate"] = degenerate
    failed = [{"id": records[p]["id"], "aspect": a, "error": v.error} for p, a, v in judged if v.error]
    info = {
        **client.identity,
        "calls": client.calls,
        "requests": len(judged),
        "cached": sum(v.cached for _, _, v in judged),
        "failures": len(failed),
        "failed_items": failed[:100],
        "parsed_by_fallback": sum(v.parse not in ("", "literal_eval") for _, _, v in judged if v.result),
        "consistency_judge_q1_twice": cfg.judge.consistency_judge_q1_twice if cfg.type == "vcgbench" else None,
    }
    return metrics, info


def to_markdown(results: dict[str, Any]) -> str:
    m, kind = results["metrics"], results["type"]
    lines = [f"# {results['benchmark']} results", ""]
    deg = m.get("degenerate") or {}
    if deg.get("flagged"):
        lines += [f"> **WARNING: {deg['summary']}.**", ""]
    lines += [
        f"model: `{results['model']}`  ",
        f"frames: {describe_frames(results['frames'])}  ",
        f"decoding: {results['generation']['rule']}, beams {results['generation']['num_beams']}  ",
    ]
    if results.get("judge"):
        j = results["judge"]
        lines.append(
            f"judge: {j['model']} @ {j['host']} (temperature {j['temperature']}), "
            f"failures {j['failures']} of {j['requests']}  "
        )
    lines.append("")
    if kind == "mcqa":
        lines += ["| task | n | acc (loose, original) | acc (strict) |", "| --- | --- | --- | --- |"]
        for name, t in m["tasks"].items():
            lines.append(f"| {name} | {t['total']} | {_fmt(t['acc'])} | {_fmt(t['strict_acc'])} |")
        lines.append(f"| **Total Acc** | {m['answered']} | {_fmt(m['total_acc'])} | {_fmt(m['strict_total_acc'])} |")
        lines.append(f"| **macro avg** | | {_fmt(m['macro_acc'])} | {_fmt(m['strict_macro_acc'])} |")
    elif kind == "vcgbench":
        lines += ["| aspect | score | judged | judge failures |", "| --- | --- | --- | --- |"]
        for name, a in m["aspects"].items():
            lines.append(f"| {name} | {_fmt(a['score'])} | {a['judged']} | {a['judge_failures']} |")
        lines.append(f"| **mean** | {_fmt(m['mean'])} | | |")
    else:
        lines += [
            "| accuracy | score | yes | no | judged | judge failures |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {_fmt(m['accuracy'], 1)} | {_fmt(m['score'])} | {m['yes']} | {m['no']} | {m['judged']} "
            f"| {m['judge_failures']} |",
        ]
    if deg:
        lines += [
            "",
            f"predictions: {deg['answered']} answered, {deg['empty']} empty, "
            + (f"{deg['no_option_letter']} without an option letter, " if kind == "mcqa" else "")
            + f"most common answer {deg['most_common']!r} ({deg['most_common_count']} times)",
        ]
    if m.get("item_errors"):
        lines += ["", f"**{m['item_errors']} items are item errors (unreadable video or bad annotation), not scored.**"]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """One chart per benchmark (matplotlib, Agg backend): MVBench/TVBench horizontal bars per task (labels never
    overlap, however few or many tasks), VCGBench the five scores, QA accuracy (%) and score (0-5) in two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, kind = results["metrics"], results["type"]
    title = f"{results['benchmark']} ({results['model']})"
    if kind == "mcqa":
        names = list(m["tasks"]) + ["Total Acc"]
        loose = [m["tasks"][n]["acc"] for n in m["tasks"]] + [m["total_acc"]]
        strict = [m["tasks"][n]["strict_acc"] for n in m["tasks"]] + [m["strict_total_acc"]]
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)))
        ys = list(range(len(names)))[::-1]  # first task at the top
        ax.barh([y + 0.2 for y in ys], [v or 0.0 for v in loose], height=0.4, label="loose (original)")
        ax.barh([y - 0.2 for y in ys], [v or 0.0 for v in strict], height=0.4, label="strict")
        ax.set_yticks(ys)
        ax.set_yticklabels(names)
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%)")
        ax.legend(loc="lower right", fontsize="small")
        ax.set_title(title)
    elif kind == "vcgbench":
        names = list(m["aspects"]) + ["mean"]
        vals = [m["aspects"][n]["score"] for n in m["aspects"]] + [m["mean"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(range(len(names)), [v or 0.0 for v in vals])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylim(0, 5)
        ax.set_ylabel("judge score (0-5)")
        ax.set_title(title)
    else:  # two quantities on two scales: two panels, each with its own axis
        fig, (ax_acc, ax_score) = plt.subplots(1, 2, figsize=(6, 4))
        ax_acc.bar([0], [m["accuracy"] or 0.0])
        ax_acc.set_ylim(0, 100)
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_xticks([0])
        ax_acc.set_xticklabels(["accuracy"])
        ax_score.bar([0], [m["score"] or 0.0], color="tab:orange")
        ax_score.set_ylim(0, 5)
        ax_score.set_ylabel("judge score (0-5)")
        ax_score.set_xticks([0])
        ax_score.set_xticklabels(["score"])
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score(predictions: Path, cfg: EvalConfig, output_dir: Path | None = None) -> dict[str, Any]:
    """Score a predictions.jsonl; writes results.json / results.md / results_<benchmark>.png; returns results."""
    if not predictions.is_file():
        raise ScoreInputError(f"predictions file not found: {predictions} (run `python -m stllm eval` first)")
    records = read_records(predictions)
    if not records:
        raise ScoreInputError(f"{predictions}: no prediction records (empty or unreadable lines only)")
    check_records(records, cfg, predictions)
    out = output_dir or predictions.parent
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cfg.judge.cache_dir) if cfg.judge.cache_dir else predictions.parent / "judge_cache"
    metrics, judge = compute_metrics(records, cfg, cache_dir)
    info_path = predictions.parent / "run_info.json"
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    results = {
        "benchmark": cfg.benchmark,
        "type": cfg.type,
        "model": run_info.get("model", "unknown"),
        "predictions": str(predictions),
        "n_records": len(records),
        "metrics": metrics,
        "judge": judge,
        "frames": config_to_dict(cfg)["frames"],
        "generation": run_info.get("generation", config_to_dict(cfg)["generation"]),
        "phase1_code_version": run_info.get("code_version"),
        "code_version": code_version(),
        "scored_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": config_to_dict(cfg),
    }
    results["generation"].setdefault(
        "rule", "sample" if cfg.generation.do_sample else ("beam" if cfg.generation.num_beams > 1 else "greedy")
    )
    results["sampling_rule"] = results["generation"]["rule"]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    plot(results, out / f"results_{cfg.benchmark or 'benchmark'}.png")
    logger.info("results in %s", out / "results.json")
    if metrics.get("degenerate", {}).get("flagged"):
        logger.warning("%s: %s", cfg.benchmark, metrics["degenerate"]["summary"])
    return results


def failure_summary(results: dict[str, Any]) -> str | None:
    """One line when nothing could be scored (every item an error, or every judge call failed), else None."""
    m, judge = results["metrics"], results.get("judge")
    n = results["n_records"]
    if m.get("item_errors", 0) >= n:
        return f"nothing scored: all {n} records are item errors (see their 'error' field in {results['predictions']})"
    if judge and judge["requests"] and judge["failures"] >= judge["requests"]:
        first = judge["failed_items"][0]["error"] if judge["failed_items"] else "?"
        return (
            f"nothing scored: all {judge['requests']} judge calls to {judge['host']} ({judge['model']}) failed, "
            f"e.g. {first}; rerun the same command to retry them"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm score", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("predictions", help="predictions.jsonl (or the phase-1 output folder)")
    parser.add_argument("--config", help="eval config; default: eval_config.yaml beside the predictions")
    parser.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    parser.add_argument("--judge-model", help="judge model name, e.g. gpt-3.5-turbo")
    parser.add_argument("--output-dir", help="where results go (default: beside the predictions)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the eval config")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pred = Path(args.predictions)
    if pred.is_dir():
        pred = pred / "predictions.jsonl"
    config = Path(args.config) if args.config else pred.parent / "eval_config.yaml"
    overrides = list(args.overrides)
    if args.judge_base_url:
        overrides.append(f"judge.base_url={args.judge_base_url}")
    if args.judge_model:
        overrides.append(f"judge.model={args.judge_model}")
    if not config.is_file():
        what = "predictions file" if not pred.is_file() else "eval_config.yaml"
        raise ConfigError(
            f"{config} not found: pass the phase-1 output folder or its predictions.jsonl, or --config CONFIG"
            + (f" ({what} {pred} does not exist)" if not pred.is_file() else "")
        )
    cfg = load_config(EvalConfig, config, overrides)
    validate(cfg)
    results = score(pred, cfg, Path(args.output_dir) if args.output_dir else None)
    print(to_markdown(results))
    summary = failure_summary(results)
    if summary:
        print(f"stllm score: {summary}", file=sys.stderr)
        return 1
    deg = results["metrics"].get("degenerate") or {}
    if deg.get("flagged"):
        print(f"stllm score: WARNING: {deg['summary']}", file=sys.stderr)
    return 0
