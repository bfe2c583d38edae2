"""Readers of each official annotation layout (docs/original.md §7.2-7.4) on tiny folders written by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stllm.config import load_config
from stllm.eval.config import EvalConfig
from stllm.eval.protocols import BenchmarkDataError, load_items
from tests.eval_layouts import CONFIGS, build_mcqa, build_open_qa, build_vcgbench


def _cfg(name: str, root: Path, *overrides: str) -> EvalConfig:
    return load_config(EvalConfig, CONFIGS / name, [f"data_root={root}", *overrides])


def test_mvbench_layout(tmp_path: Path) -> None:
    build_mcqa(tmp_path, per_task=2)
    items = load_items(_cfg("mvbench.yaml", tmp_path))
    assert len(items) == 40 and len({i.id for i in items}) == 40
    assert [i.index for i in items] == list(range(40))
    first = items[0]
    assert first.id == "action_sequence/0" and first.task == "Action Sequence"
    assert (first.start, first.end) == (0.5, 2.5) and first.answer == "(A) walking"
    assert (
        first.question
        == "Question: What happens in Action Sequence 0?\nOptions:\n(A) walking\n(B) running\n(C) sitting"
    )
    episodic = [i for i in items if i.task == "Episodic Reasoning"]
    assert episodic[0].media_type == "frame" and episodic[0].media_fps == 3 and Path(episodic[0].video).is_dir()
    assert all(Path(i.video).exists() for i in items)
    assert items[4].task == "Action Antonym" and items[4].start is None  # no bound


def test_mvbench_missing_json_names_the_file(tmp_path: Path) -> None:
    build_mcqa(tmp_path)
    (tmp_path / "json" / "moving_count.json").unlink()
    with pytest.raises(BenchmarkDataError, match="moving_count.json"):
        load_items(_cfg("mvbench.yaml", tmp_path))
    with pytest.raises(BenchmarkDataError, match="data_root"):
        load_items(load_config(EvalConfig, CONFIGS / "mvbench.yaml"))


def test_mvbench_missing_field_is_named(tmp_path: Path) -> None:
    build_mcqa(tmp_path)
    path = tmp_path / "json" / "action_sequence.json"
    rows = json.loads(path.read_text())
    del rows[0]["start"]
    path.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkDataError, match=r"action_sequence.json item 0.*start"):
        load_items(_cfg("mvbench.yaml", tmp_path))


def test_tvbench_table_and_discovery(tmp_path: Path) -> None:
    build_mcqa(tmp_path, config="tvbench.yaml")
    extra = [{"video": "x.mp4", "question": "q", "candidates": ["a", "b"], "answer": "b"}]
    (tmp_path / "json" / "new_task.json").write_text(json.dumps(extra))
    items = load_items(_cfg("tvbench.yaml", tmp_path))
    tasks = list(dict.fromkeys(i.task for i in items))
    assert len(tasks) == 11 and tasks[-1] == "New Task" and tasks[0] == "Action Count"
    assert items[-1].video.endswith("video/new_task/x.mp4") and items[-1].answer == "(B) b"
    assert items[-1].frame_rule == "mvbench"


def test_vcgbench_layout_and_q29(tmp_path: Path) -> None:
    build_vcgbench(tmp_path)
    items = load_items(_cfg("vcgbench.yaml", tmp_path))
    assert [i.id for i in items] == ["generic/0", "generic/1", "temporal/0", "consistency/0"]
    assert items[1].video.endswith("v_b.mkv")  # first existing extension
    assert items[3].extra["question2"] == "Is the screen light?" and items[3].question == "Is it bright?"
    rows = json.loads((tmp_path / "Benchmarking_QA" / "temporal_qa.json").read_text())
    rows[0]["video_name"] = "missing"
    (tmp_path / "Benchmarking_QA" / "temporal_qa.json").write_text(json.dumps(rows))
    fixed = load_items(_cfg("vcgbench.yaml", tmp_path))
    assert not Path(fixed[2].video).exists()  # docs/faithfulness.md Q29 fix: fails later as a counted MediaError
    legacy = load_items(_cfg("vcgbench.yaml", tmp_path, "vcgbench_keep_previous_video=true"))
    assert legacy[2].video == legacy[1].video  # the original's stale path


@pytest.mark.parametrize(
    "layout,config", [("msvd", "msvd_qa.yaml"), ("msrvtt", "msrvtt_qa.yaml"), ("anet", "anet_qa.yaml")]
)
def test_open_qa_layouts(tmp_path: Path, layout: str, config: str) -> None:
    build_open_qa(tmp_path, layout)
    items = load_items(_cfg(config, tmp_path))
    assert len(items) == 2 and all(Path(i.video).is_file() for i in items)
    ids = {"msvd": ["10", "11"], "msrvtt": ["1", "2"], "anet": ["v_abc_0", "v_abc_1"]}[layout]
    assert [i.id for i in items] == ids
    assert items[1].answer in ("yes", "nobody")
    assert items[0].frame_rule == "uniform_middle"


def test_anet_extension_switch(tmp_path: Path) -> None:
    build_open_qa(tmp_path, "anet")
    strict = load_items(_cfg("anet_qa.yaml", tmp_path, "anet_try_extensions=false"))
    assert strict[0].video.endswith("all_test/v_abc")  # docs/faithfulness.md Q10: the original's path (no extension)
    with pytest.raises(BenchmarkDataError, match="test_a.json"):
        load_items(_cfg("anet_qa.yaml", tmp_path, "answer_file=nope/test_a.json"))
