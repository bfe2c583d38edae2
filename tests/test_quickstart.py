"""The quickstart end to end in --fast mode (pipeline only: no accuracy is asserted), and its synthetic data."""
from __future__ import annotations

import json
import random

import numpy as np

from stllm.quickstart import main as quickstart_main
from stllm.synthetic import TASKS, build_dataset


def test_temporal_classes_are_time_reversals_and_colour_is_static():
    """Mean pooling is blind by construction: reversing a temporal clip gives the other answer's clip."""
    for task, (draw, temporal) in TASKS.items():
        clip = draw(random.Random(3), 16, 64)
        if temporal:
            assert not np.array_equal(clip.frames, clip.frames[::-1]), task
            # the frame multiset (all a pooling model can see) is the same forwards and backwards
            assert np.array_equal(np.sort(clip.frames.reshape(16, -1), axis=0),
                                  np.sort(clip.frames[::-1].reshape(16, -1), axis=0))
        else:
            assert all(np.array_equal(f, clip.frames[0]) for f in clip.frames), task


def test_dataset_layouts_are_deterministic(tmp_path):
    a = build_dataset(tmp_path / "a", seed=7, train_per_task=3, eval_per_task=2)
    b = build_dataset(tmp_path / "b", seed=7, train_per_task=3, eval_per_task=2)
    assert a["train_annotations"].read_text() == b["train_annotations"].read_text()
    items = json.loads(a["train_annotations"].read_text())
    assert len(items) == 3 * len(TASKS) and all(set(i) >= {"video", "QA"} for i in items)
    assert items[0]["QA"][0]["a"].startswith("Best option:(")
    for task in TASKS:
        rows = json.loads((a["eval_json"] / f"{task}.json").read_text())
        assert len(rows) == 2 and all(r["answer"] in r["candidates"] for r in rows)
        assert all((a["eval_media"] / r["video"]).is_file() for r in rows)


def test_fast_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert quickstart_main(["--fast", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("mvbench_strict_accuracy_percent", "answer_accuracy_percent"):
        assert set(results[key]) == {"all", "all+mask+MVM", "mean"}
        for acc in results[key].values():
            assert set(acc) == set(TASKS) and all(0 <= v <= 100 for v in acc.values())
    assert (out / "quickstart_accuracy.png").stat().st_size > 1000
    for variant in ("all", "all_mask_MVM", "mean"):
        assert (out / "models" / variant / "config.json").is_file()
        assert (out / "eval" / variant / "predictions.jsonl").is_file()
    printed = capsys.readouterr().out
    assert printed.count("| variant |") == 2 and "quickstart_accuracy.png" in printed
