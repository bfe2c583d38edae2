"""The config loader: defaults <- YAML (with _base_) <- overrides; unknown keys name the valid ones."""

from __future__ import annotations

import dataclasses

import pytest

from stllm.config import ConfigError, load_config


@dataclasses.dataclass
class Inner:
    video_input: str = "all"
    frames: int = 16


@dataclasses.dataclass
class Outer:
    model: Inner = dataclasses.field(default_factory=Inner)
    lr: float = 2e-5
    names: list[str] = dataclasses.field(default_factory=list)


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  frames: 64\nlr: 1.0e-4\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nnames: [a]\n")
    cfg = load_config(Outer, tmp_path / "child.yaml", ["model.video_input=mean", "names=[a,b]"])
    assert cfg == Outer(Inner("mean", 64), 1e-4, ["a", "b"])


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "model.vidoe_input=x",
            r"unknown key 'model.vidoe_input' \(did you mean video_input\?\); valid keys here: "
            r"video_input, frames",
        ),
        ("lrr=1", r"did you mean lr\?"),
        ("model.frames=many", r"model.frames='many'"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_bad_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("modle:\n  frames: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'modle' \(did you mean model\?\)"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
