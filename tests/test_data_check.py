"""`python -m stllm data check`: a good config passes, a broken one fails with a message naming the dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from stllm.cli import main as cli_main
from stllm.config import ConfigError
from stllm.data.check import main as check_main
from stllm.data.config import load_data_config
from tests.data_media import write_it_dataset, write_video

REPO = Path(__file__).resolve().parents[1]
QA = [{"i": "", "q": "q", "a": "a"}]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    (root / "vids").mkdir()
    for k in range(2):
        write_video(root / "vids" / f"v{k}.mp4", n=12, fps=10)
    (root / "vids" / "corrupt.mp4").write_text("garbage")
    write_it_dataset(root, "good", [{"video": f"v{k}.mp4", "QA": QA} for k in range(2)])
    write_it_dataset(
        root,
        "broken",
        [{"video": "v0.mp4", "QA": QA}, {"video": "corrupt.mp4", "QA": QA}, {"video": "missing.mp4", "QA": QA}],
    )
    return root


def write_config(path: Path, root: Path, names: list[str], required_broken: bool = True) -> Path:
    lines = [f"data_root: {root}", "anno_root: anno", "datasets:"]
    for name in names:
        req = "true" if (name != "broken" or required_broken) else "false"
        lines.append(
            f"  - {{name: {name}, annotation: {name}.json, media_root: vids, media_type: video, "
            f"num_frames: 4, required: {req}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_config_passes(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "good.yaml", data_root, ["good"])
    assert check_main([str(cfg), "--all"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "OK" in out


def test_broken_config_fails_and_names_problems(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "broken.yaml", data_root, ["good", "broken"])
    assert cli_main(["data", "check", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "FAIL" in out and "missing.mp4" in out and "corrupt.mp4" in out


def test_optional_broken_dataset_and_absent_annotation(data_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "opt.yaml", data_root, ["good", "broken"], required_broken=False)
    assert check_main([str(cfg)]) == 0
    cfg = write_config(tmp_path / "absent.yaml", data_root, ["good", "nothere"])
    assert check_main([str(cfg)]) == 1
    assert "ABSENT" in capsys.readouterr().out


def test_training_config_data_section_and_overrides(data_root, tmp_path):
    good = write_config(tmp_path / "plain.yaml", data_root, ["good"]).read_text()
    train = tmp_path / "train.yaml"
    train.write_text(
        "model: {anything: 1}\ntrain: {learning_rate: 2e-5}\ndata:\n"
        + "".join("  " + line + "\n" for line in good.splitlines())
    )
    assert check_main([str(train), "data.on_bad_media=fail", "--sample", "1"]) == 0
    cfg = load_data_config(train, ["max_retries=2"])
    assert cfg.max_retries == 2 and cfg.datasets[0].name == "good"
    with pytest.raises(ConfigError, match=r"unknown key 'nonsense'; valid keys here: data_root, anno_root, catalog"):
        load_data_config(train, ["nonsense=1"])
    with pytest.raises(ConfigError, match="mixture"):  # the CLI reports it: one line, exit 2
        check_main([str(train), "mixture=bogus"])
    assert cli_main(["data", "check", str(train), "mixture=bogus"]) == 2


def test_repository_catalog_and_recipes_resolve():
    catalog = load_data_config(REPO / "configs" / "data" / "videochat2_it.yaml")
    names = {d.name for d in catalog.datasets}
    bold = {
        "caption_videochat",
        "caption_webvid",
        "classification_k710",
        "classification_ssv2",
        "conversation_videochat1",
        "caption_videochatgpt",
        "reasoning_next_qa",
        "reasoning_clevrer_qa",
        "reasoning_clevrer_mc",
        "vqa_webvid_qa",
    }
    assert bold <= names and len(names) == 37
    qa = load_data_config(REPO / "configs" / "data" / "stllm_qa.yaml", ["data_root=/data"])
    assert [d.num_frames for d in qa.datasets] == [16] * 7
    k710 = next(d for d in qa.datasets if d.name == "classification_k710")
    assert k710.annotation == "video/classification/k710/train.json" and k710.media_type == "video"
    conv = load_data_config(REPO / "configs" / "data" / "stllm_conversation.yaml")
    assert len(conv.datasets) == 5 and conv.datasets[0].num_frames == 64


def test_unknown_catalog_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"catalog: {REPO / 'configs' / 'data' / 'videochat2_it.yaml'}\ndatasets:\n  - {{name: nope}}\n")
    with pytest.raises(ConfigError, match="'nope' is not in the catalog"):
        load_data_config(cfg)
