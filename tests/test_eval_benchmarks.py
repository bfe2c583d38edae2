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


def _edit(path: Path, index: int, **fields: object) -> None:
    rows = json.loads(path.read_text())
    rows[index].update(fields)
    path.write_text(json.dumps(rows))


def test_mvbench_reversed_window_is_an_item_error(tmp_path: Path) -> None:
    build_mcqa(tmp_path, per_task=2)
    _edit(tmp_path / "json" / "action_sequence.json", 1, start=3.0, end=1.0)
    items = load_items(_cfg("mvbench.yaml", tmp_path))
    assert len(items) == 40  # the rest goes on
    bad = [i for i in items if i.error]
    assert [i.id for i in bad] == ["action_sequence/1"]
    reason = bad[0].error or ""
    assert "end 1 s lies before start 3 s" in reason and "action_sequence.json item 1" in reason
    assert bad[0].extra["item_error"] == bad[0].error  # travels with the prediction record to `score`


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"question": 3}, "'question' must be a string"),
        ({"candidates": "walking"}, "'candidates' must be a list of strings"),
        ({"candidates": ["walking", 2]}, "'candidates' must be a list of strings"),
        ({"start": "abc"}, "'start' must be a number of seconds"),
        ({"end": None}, "'end' must be a number of seconds"),
        ({"answer": ["walking"]}, "'answer' must be a string"),
    ],
)
def test_mvbench_wrong_field_types_name_file_and_item(tmp_path: Path, fields: dict, needle: str) -> None:
    build_mcqa(tmp_path)
    _edit(tmp_path / "json" / "action_prediction.json", 0, **fields)
    with pytest.raises(BenchmarkDataError, match=r"action_prediction.json item 0: field " + needle.replace("(", r"\(")):
        load_items(_cfg("mvbench.yaml", tmp_path))


def test_mvbench_only_tasks_and_missing_task_hint(tmp_path: Path) -> None:
    from stllm.config import ConfigError

    build_mcqa(tmp_path)
    (tmp_path / "json" / "moving_count.json").unlink()
    with pytest.raises(BenchmarkDataError, match=r"moving_count.json.*only_tasks="):
        load_items(_cfg("mvbench.yaml", tmp_path))
    items = load_items(_cfg("mvbench.yaml", tmp_path, "only_tasks=[action_sequence,Episodic Reasoning]"))
    assert [i.task for i in items] == ["Action Sequence", "Episodic Reasoning"]  # table order
    with pytest.raises(ConfigError, match=r"only_tasks: unknown task\(s\) \['nope'\]; valid: action_sequence"):
        load_items(_cfg("mvbench.yaml", tmp_path, "only_tasks=[nope]"))
    assert len(load_items(_cfg("mvbench.yaml", tmp_path, "only_tasks=[action_sequence]", "limit=1"))) == 1


def test_discovered_task_media_is_relative_to_data_root(tmp_path: Path) -> None:
    build_mcqa(tmp_path, config="tvbench.yaml")
    rows = [{"video": "x.mp4", "question": "q", "candidates": ["a", "b"], "answer": "b"}]
    (tmp_path / "json" / "new_task.json").write_text(json.dumps(rows))
    items = load_items(_cfg("tvbench.yaml", tmp_path, "discovered_media_root="))
    assert items[-1].video == str(tmp_path / "new_task" / "x.mp4")  # not /new_task/x.mp4 at the filesystem root


def test_vcgbench_only_tasks(tmp_path: Path) -> None:
    build_vcgbench(tmp_path)
    items = load_items(_cfg("vcgbench.yaml", tmp_path, "only_tasks=[temporal]"))
    assert [i.id for i in items] == ["temporal/0"]


@pytest.mark.parametrize(
    "layout,config", [("msvd", "msvd_qa.yaml"), ("msrvtt", "msrvtt_qa.yaml"), ("anet", "anet_qa.yaml")]
)
def test_open_qa_two_folder_form(tmp_path: Path, layout: str, config: str) -> None:
    """Annotations in one folder, videos in another (the official archives): data_root= + video_dir=."""
    build_open_qa(tmp_path / "src", layout)
    anno, videos = tmp_path / "annotations", tmp_path / "clips"
    anno.mkdir()
    for f in (tmp_path / "src").glob("*.json"):
        f.rename(anno / f.name)
    (tmp_path / "src" / {"anet": "all_test"}.get(layout, "videos")).rename(videos)
    with pytest.raises(BenchmarkDataError, match=r"video folder .* not found: .*video_dir=VIDEO_FOLDER"):
        load_items(_cfg(config, anno))  # one line at once instead of every item failing
    items = load_items(_cfg(config, anno, f"video_dir={videos}"))
    assert len(items) == 2 and all(Path(i.video).is_file() for i in items)


def test_msvd_msrvtt_names_without_extension(tmp_path: Path) -> None:
    build_open_qa(tmp_path, "msvd")
    rows = json.loads((tmp_path / "test_qa.json").read_text())
    rows[0]["video_name"] = "vid1"  # no extension: the file is vid1.avi
    (tmp_path / "test_qa.json").write_text(json.dumps(rows))
    assert load_items(_cfg("msvd_qa.yaml", tmp_path))[0].video.endswith("videos/vid1.avi")
    build_open_qa(tmp_path / "r", "msrvtt")
    (tmp_path / "r" / "videos" / "video7.mp4").rename(tmp_path / "r" / "videos" / "video7.mkv")
    assert load_items(_cfg("msrvtt_qa.yaml", tmp_path / "r"))[0].video.endswith("videos/video7.mkv")
