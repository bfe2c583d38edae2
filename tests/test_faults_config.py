"""Configuration faults through every command that reads one (docs/reliability.md, Configuration files and
overrides): malformed YAML, a file that is not UTF-8, a `_base_` chain that includes itself, an unreadable
StllmConfig JSON and invalid model.config values each end with one line naming the file or key, exit status 2
and no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from stllm.cli import main as cli_main
from tests.faults import REPO, Run, assert_user_error, run_cli

TINY = REPO / "configs" / "train" / "tiny.yaml"


def write_bad_configs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (config file, a needle of its one-line error)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "malformed.yaml").write_text("data_root: [1, 2\nbatch_size: 3\n")
    (folder / "latin1.yaml").write_bytes("data_root: caf\xe9\n".encode("latin-1"))
    (folder / "self.yaml").write_text("_base_: self.yaml\nbatch_size: 2\n")
    (folder / "a.yaml").write_text("_base_: b.yaml\n")
    (folder / "b.yaml").write_text("_base_: a.yaml\n")
    return {
        "malformed": (folder / "malformed.yaml", "not valid YAML (line 2"),
        "latin1": (folder / "latin1.yaml", "not a UTF-8 text file"),
        "self_base": (folder / "self.yaml", "the _base_ chain includes itself"),
        "base_cycle": (folder / "a.yaml", "the _base_ chain includes itself"),
    }


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_bad_configs(tmp_path_factory.mktemp("configs"))


def cli(capsys, *args: str | Path) -> Run:
    """`python -m stllm ARGS` in this process (the CLI's own error handling, without a subprocess per case)."""
    rc = cli_main([str(a) for a in args])
    out = capsys.readouterr()
    return Run(rc, out.out, out.err)


COMMANDS = {
    "train": lambda cfg, tmp: ["train", cfg, f"train.output_dir={tmp / 'out'}"],
    "data check": lambda cfg, tmp: ["data", "check", cfg],
    "eval": lambda cfg, tmp: ["eval", cfg, "--model", tmp / "no_model", f"output_dir={tmp / 'out'}"],
    "score": lambda cfg, tmp: ["score", tmp / "predictions.jsonl", "--config", cfg],
}


@pytest.mark.parametrize("case", ["malformed", "latin1", "self_base", "base_cycle"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_yaml_is_one_line_in_every_command(command, case, bad_configs, tmp_path, capsys):
    path, needle = bad_configs[case]
    (tmp_path / "predictions.jsonl").write_text("")
    ran = cli(capsys, *COMMANDS[command](path, tmp_path))
    line = assert_user_error(ran, f"stllm {command}: error:", path.name, needle)
    assert line.count("\n") == 0 and not (tmp_path / "out").exists()


def test_bad_yaml_end_to_end_without_a_traceback(bad_configs, tmp_path):
    path, needle = bad_configs["malformed"]
    for args in (["train", path], ["data", "check", path]):
        assert_user_error(run_cli(*args), path.name, needle)


def test_model_config_value_names_the_key_before_the_model_is_built(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from stllm.models.modeling import StllmForConditionalGeneration

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built before the config error was raised")

    monkeypatch.setattr(StllmForConditionalGeneration, "from_pretrained", forbidden)
    (tmp_path / "anno").mkdir()
    (tmp_path / "anno" / "toy.json").write_text("[]")
    base = ["train", TINY, f"model.init_from={tiny_model_dir}", f"data.data_root={tmp_path}"]
    base.append(f"train.output_dir={tmp_path / 'out'}")
    ran = cli(capsys, *base, "model.config.video_input=bogus")
    assert_user_error(ran, "model.config.video_input='bogus'", "video_input must be one of")
    ran = cli(capsys, *base, "model.config.num_query_tokens=0")
    assert_user_error(ran, "model.config.num_query_tokens=0", "must be positive")
    ran = cli(capsys, *base, "model.config.mask_ratio_min=0.9", "model.config.mask_ratio_max=0.2")
    assert_user_error(ran, "model.config.mask_ratio_min=0.9", "model.config.mask_ratio_max=0.2")
    ran = cli(capsys, *base, "model.config.video_inptu=all")
    assert_user_error(ran, "model.config.video_inptu", "did you mean video_input")
    assert not (tmp_path / "out").exists()


def test_unreadable_init_from_config_json(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_text('{"video_input": "all",')
    (tmp_path / "anno").mkdir()
    (tmp_path / "anno" / "toy.json").write_text("[]")
    ran = cli(capsys, "train", TINY, f"model.init_from={model}", f"data.data_root={tmp_path}")
    assert_user_error(ran, "model.init_from", str(model / "config.json"), "not a readable StllmConfig")


def test_data_check_without_datasets_is_a_config_error(tmp_path, capsys):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("data_root: /data\n")
    assert_user_error(cli(capsys, "data", "check", cfg), "stllm data check: error:", "empty.yaml", "no datasets")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"video_input": "all",', "Expecting"),
        ('{"x": "caf\xe9"}'.encode("latin-1"), "can't decode"),
        (b'{"video_input": "bogus"}', "video_input must be one of"),
    ],
    ids=["malformed", "latin1", "invalid_value"],
)
def test_convert_config_json_is_one_line(content, needle, tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_bytes(content)
    (tmp_path / "src").mkdir()
    args = ["convert", "--from-stllm", tmp_path / "src", "--recipe", "qa", "--config", cfg, "--out", tmp_path / "out"]
    ran = cli(capsys, *args, "--no-tokenizer")
    assert_user_error(ran, "stllm convert: error:", "config.json", needle)
    assert not (tmp_path / "out").exists()


def test_inspect_unreadable_config_json_is_one_line(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").write_bytes('{"recipe": "caf\xe9"}'.encode("latin-1"))
    assert_user_error(cli(capsys, "inspect", model), "stllm inspect: error:", "config.json", "not a readable")
    (model / "config.json").unlink()
    assert_user_error(cli(capsys, "inspect", model), "stllm inspect: error:", "config.json", "not found")
