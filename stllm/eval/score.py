"""`python -m stllm score PREDICTIONS [--judge-base-url URL --judge-model M] [key=value ...]`
-> results.json, results.md and a bar chart PNG beside the predictions (phase 2 of docs/design.md decision 8).

The protocol (benchmark type, judge prompts) comes from eval_config.yaml written by phase 1 beside the predictions;
key=value overrides apply on top (e.g. judge.temperature=0, judge.consistency_judge_q1_twice=false).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from stllm import code_version
from stllm.config import config_to_dict, load_config
from stllm.eval.config import EvalConfig, validate
from stllm.eval.judge import JudgeClient, build_messages
from stllm.eval.metrics import judge_requests, score_mcqa, score_open_qa, score_vcgbench
from stllm.eval.records import read_records

logger = logging.getLogger(__name__)


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def judge_records(records: list[dict[str, Any]], cfg: EvalConfig, cache_dir: Path) -> tuple[list, JudgeClient]:
    """Every judge call of the benchmark -> [(record position, aspect, Verdict)], through the cached client."""
    requests = judge_requests(records, cfg.type, cfg.judge)
    missing = sorted({aspect for _, aspect, _ in requests} - set(cfg.judge.prompts))
    if missing:
        raise SystemExit(f"eval config has no judge prompt for {', '.join(missing)} (judge.prompts)")
    key = os.environ.get(cfg.judge.api_key_env)
    if not key:
        logger.warning("environment variable %s is not set: calling the judge without a key", cfg.judge.api_key_env)
    client = JudgeClient(cfg.judge, key, cache_dir)
    calls = [(build_messages(cfg.judge.prompts[a], v), cfg.judge.prompts[a].keys) for _, a, v in requests]
    verdicts = client.judge_many(calls, desc=f"judge {cfg.benchmark}")
    return [(pos, a, v) for (pos, a, _), v in zip(requests, verdicts)], client


def compute_metrics(
    records: list[dict[str, Any]], cfg: EvalConfig, cache_dir: Path
) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """-> (metrics, judge info or None)."""
    if cfg.type == "mcqa":
        return score_mcqa(records), None
    errors = sum(1 for r in records if r.get("error"))
    judged, client = judge_records(records, cfg, cache_dir)
    if cfg.type == "vcgbench":
        metrics = score_vcgbench([(a, v.result) for _, a, v in judged], errors)
    else:
        metrics = score_open_qa([v.result for _, _, v in judged], errors)
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
    lines = [
        f"# {results['benchmark']} results",
        "",
        f"model: `{results['model']}`  ",
        f"frames: {results['frames']['rule']} ({results['frames']['num_frames']})  ",
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
    if m.get("item_errors"):
        lines += ["", f"**{m['item_errors']} items could not be read in phase 1 and are not scored.**"]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """One bar chart per benchmark (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, kind = results["metrics"], results["type"]
    if kind == "mcqa":
        names = list(m["tasks"]) + ["Total Acc"]
        series = {
            "loose": [m["tasks"][n]["acc"] for n in m["tasks"]] + [m["total_acc"]],
            "strict": [m["tasks"][n]["strict_acc"] for n in m["tasks"]] + [m["strict_total_acc"]],
        }
        ylabel = "accuracy (%)"
    elif kind == "vcgbench":
        names = list(m["aspects"]) + ["mean"]
        series = {"score": [m["aspects"][n]["score"] for n in m["aspects"]] + [m["mean"]]}
        ylabel = "judge score (0-5)"
    else:
        names = ["accuracy / 20", "score"]
        acc = m["accuracy"] / 20 if m["accuracy"] is not None else None
        series = {"value": [acc, m["score"]]}
        ylabel = "score (0-5); accuracy % / 20"
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 4))
    width = 0.8 / len(series)
    for k, (label, vals) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, [v or 0.0 for v in vals], width=width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=60 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{results['benchmark']} ({results['model']})")
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score(predictions: Path, cfg: EvalConfig, output_dir: Optional[Path] = None) -> dict[str, Any]:
    """Score a predictions.jsonl; writes results.json / results.md / results_<benchmark>.png; returns results."""
    records = read_records(predictions)
    if not records:
        raise SystemExit(f"no predictions in {predictions}")
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
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
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
    cfg = load_config(EvalConfig, config, overrides)
    validate(cfg)
    results = score(pred, cfg, Path(args.output_dir) if args.output_dir else None)
    print(to_markdown(results))
    return 0
