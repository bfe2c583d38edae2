"""Failure contract of `python -m stllm score` (docs/reliability.md, "Scoring and the judge"): bad inputs are one line
with exit status 2, nothing scorable is exit status 1 with a one-line summary, degenerate predictions are flagged."""

from __future__ import annotations

import json
from pathlib import Path

from stllm.config import load_config, save_config
from stllm.eval.config import EvalConfig
from tests.eval_layouts import CONFIGS
from tests.faults import assert_user_error, run_cli


def _phase1_dir(tmp_path: Path, records: list[dict], config: str = "mvbench.yaml") -> Path:
    out = tmp_path / "out"
    out.mkdir(parents=True)
    save_config(load_config(EvalConfig, CONFIGS / config, ["data_root=/data/MVBench"]), out / "eval_config.yaml")
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _rec(i: int, **kw: object) -> dict:
    base = {"id": f"t/{i}", "index": i, "benchmark": "mvbench", "task": "Action Sequence", "question": "q"}
    return {**base, "answer": "(A) x", "error": None, **kw}


def _mc(i: int, pred: object, truth: str = "A", **kw: object) -> dict:
    return _rec(i, pred=pred, answer=f"({truth}) x", **kw)


def test_missing_predictions_and_config(tmp_path: Path) -> None:
    assert_user_error(run_cli("score", str(tmp_path / "nowhere")), "nowhere", "not found")
    out = _phase1_dir(tmp_path, [_mc(0, "(A) x")])
    (out / "eval_config.yaml").unlink()
    assert_user_error(run_cli("score", str(out)), "eval_config.yaml", "--config")
    empty = _phase1_dir(tmp_path / "e", [])
    assert_user_error(run_cli("score", str(empty)), "predictions.jsonl", "no prediction records")


def test_record_without_its_fields(tmp_path: Path) -> None:
    out = _phase1_dir(tmp_path, [_mc(0, "(A) x"), _mc(1, None)])
    assert_user_error(run_cli("score", str(out)), "predictions.jsonl record 2", "'pred'")


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    out = _phase1_dir(tmp_path, [_mc(0, "(A) x")])
    assert_user_error(run_cli("score", str(out), "judge.temprature=0"), "judge.temprature", "temperature")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {CONFIGS / 'mvbench.yaml'}\ntasks:\n  - {{name: X, jsn: x.json}}\n")
    line = assert_user_error(run_cli("score", str(out), "--config", str(bad)), "bad.yaml", "'jsn'")
    assert "TaskSpec entry" in line and "valid keys here: name, json, media, data_type, bound, fps" in line
    no_prompts = _phase1_dir(tmp_path / "q", [_rec(1, pred="p", answer="a")], "anet_qa.yaml")
    cfg = (no_prompts / "eval_config.yaml").read_text().split("\n  prompts:")[0] + "\n"
    (no_prompts / "eval_config.yaml").write_text(cfg)
    assert_user_error(run_cli("score", str(no_prompts), "--judge-base-url", "http://127.0.0.1:9"), "judge prompt", "qa")


def test_everything_an_item_error_exits_1(tmp_path: Path) -> None:
    recs = [
        _rec(0, error="MediaError: v.mp4: file not found"),
        _mc(1, "(A) x", extra={"item_error": "json item 1: end 1 s lies before start 3 s"}),
    ]
    run = run_cli("score", str(_phase1_dir(tmp_path, recs)))
    assert run.rc == 1 and "Traceback" not in run.stderr
    lines = [x for x in run.stderr.splitlines() if x.startswith("stllm score: nothing scored")]
    assert len(lines) == 1 and "all 2 records are item errors" in lines[0]


def test_nan_model_is_flagged(tmp_path: Path) -> None:
    out = _phase1_dir(tmp_path, [_mc(i, "(", "ABCD"[i % 4]) for i in range(8)])
    run = run_cli("score", str(out))
    assert run.rc == 0 and "Traceback" not in run.stderr
    assert "stllm score: WARNING: degenerate predictions: 8 of 8 empty" in run.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["total_acc"] == 100.0 and res["metrics"]["strict_total_acc"] == 0.0
    assert res["metrics"]["degenerate"]["identical"] and res["metrics"]["degenerate"]["empty"] == 8
    assert "**WARNING: degenerate predictions" in (out / "results.md").read_text().splitlines()[2]
