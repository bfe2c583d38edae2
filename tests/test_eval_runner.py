"""Phase 1: predictions.jsonl written as it goes, resumable after a real kill, identical under 2 torchrun ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stllm.config import load_config
from stllm.eval.config import EvalConfig
from stllm.eval.predict import main as eval_main
from stllm.eval.predict import run
from stllm.eval.records import read_records
from tests.eval_layouts import CONFIGS, REPO, build_mcqa, build_vcgbench, fake_answerer

DRIVER = """
import sys, time
from stllm.config import load_config
from stllm.eval.config import EvalConfig
from stllm.eval.predict import run
from tests.eval_layouts import fake_answerer

delay = float(sys.argv[2])

def slow(pixel_values, prompts, qformer_texts):
    time.sleep(delay)
    return fake_answerer(pixel_values, prompts, qformer_texts)

run(load_config(EvalConfig, sys.argv[1], sys.argv[3:]), "fake-model", slow)
"""


def _cfg(root: Path, out: Path, *extra: str, name: str = "mvbench.yaml") -> EvalConfig:
    return load_config(EvalConfig, CONFIGS / name, [f"data_root={root}", f"output_dir={out}", *extra])


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def mv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mcqa(tmp_path_factory.mktemp("mvbench"))


@pytest.fixture(scope="module")
def reference(mv_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """An uninterrupted single-process run with the fake answerer."""
    out = tmp_path_factory.mktemp("ref")
    counts = run(_cfg(mv_root, out), "fake-model", fake_answerer)
    assert counts == {"answered": 20, "errors": 0, "skipped": 0}
    return _lines(out / "predictions.jsonl")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return env


def test_records(reference: list[str]) -> None:
    recs = [json.loads(line) for line in reference]
    assert [r["index"] for r in recs] == list(range(20))
    first = recs[0]
    assert first["frame_indices"] == [
        6,
        10,
        14,
        18,
    ]  # docs/original.md §7.2 get_index: 24 frames @ 8 fps, bound 0.5-2.5 s
    assert first["prompt"].startswith("<ImageHere>###Human: Carefully watch") and first["pred"].startswith("(")
    assert first["raw"].count("###") == 1 and "###" not in first["pred"] and "\n" not in first["pred"]
    episodic = next(r for r in recs if r["task"] == "Episodic Reasoning")
    assert len(episodic["frame_indices"]) == 4  # 2 s window at 3 fps -> fps-1 rule clamps to 4 frames


def test_resume_after_partial_line(mv_root: Path, reference: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(_cfg(mv_root, out), "fake-model", fake_answerer)
    pred = out / "predictions.jsonl"
    lines = _lines(pred)
    pred.write_text("\n".join(lines[:7]) + "\n" + lines[7][: len(lines[7]) // 2])  # killed while writing line 8
    counts = run(_cfg(mv_root, out), "fake-model", fake_answerer)
    assert counts["skipped"] == 7 and counts["answered"] == 13
    assert _lines(pred) == reference
    assert json.loads((out / "run_info.json").read_text())["status"] == "done"
    assert (out / "eval_config.yaml").is_file()


def test_real_kill_and_resume(mv_root: Path, reference: list[str], tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(driver),
        str(CONFIGS / "mvbench.yaml"),
        "0.15",
        f"data_root={mv_root}",
        f"output_dir={out}",
    ]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pred = out / "predictions.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not pred.is_file() or len(_lines(pred)) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    written = len(read_records(pred))
    assert 5 <= written < 20, written
    done = subprocess.run(
        args[:3] + ["0"] + args[4:], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _lines(pred) == reference


def test_bad_video_is_an_error_line_then_retried(mv_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "mv"
    build_mcqa(root)
    victim = root / "video" / "ssv2_video" / "action_antonym_0.mp4"
    good = victim.read_bytes()
    victim.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    counts = run(_cfg(root, out), "fake-model", fake_answerer)
    assert counts["errors"] == 1 and counts["answered"] == 19
    recs = read_records(out / "predictions.jsonl")
    bad = [r for r in recs if r.get("error")]
    assert len(recs) == 20 and bad[0]["id"] == "action_antonym/0" and "action_antonym_0.mp4" in bad[0]["error"]
    victim.write_bytes(good)
    counts = run(_cfg(root, out), "fake-model", fake_answerer)
    assert counts == {"answered": 1, "errors": 0, "skipped": 19}
    assert not any(r.get("error") for r in read_records(out / "predictions.jsonl"))


def test_resume_refuses_changed_protocol(mv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(_cfg(mv_root, out, "limit=3"), "fake-model", fake_answerer)
    with pytest.raises(SystemExit, match="generation"):
        run(_cfg(mv_root, out, "limit=3", "generation.num_beams=2"), "fake-model", fake_answerer)


def test_torchrun_two_ranks_match_one(mv_root: Path, reference: list[str], tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    port = 29500 + os.getpid() % 2000
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(driver),
        str(CONFIGS / "mvbench.yaml"),
        "0",
        f"data_root={mv_root}",
        f"output_dir={out}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _lines(out / "predictions.jsonl") == reference
    assert not list(out.glob("predictions.rank*.jsonl"))  # merged, shards removed
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2


def test_tiny_model_end_to_end(tiny_model_dir: Path, mv_root: Path, tmp_path: Path) -> None:
    """The real model + processor through the CLI; batching (left padding) gives the same greedy answers."""
    common = [f"data_root={mv_root}", "frames.size=28", "frames.num_frames=4", "limit=2", "generation.max_new_tokens=4"]
    outs = {}
    for bs in (1, 2):
        out = tmp_path / f"bs{bs}"
        assert (
            eval_main(
                [
                    str(CONFIGS / "mvbench.yaml"),
                    "--model",
                    str(tiny_model_dir),
                    f"output_dir={out}",
                    f"batch_size={bs}",
                    *common,
                ]
            )
            == 0
        )
        outs[bs] = [(r["raw"], r["pred"]) for r in read_records(out / "predictions.jsonl")]
    assert outs[1] == outs[2] and len(outs[1]) == 2 and all(p.startswith("(") for _, p in outs[1])
    info = json.loads((tmp_path / "bs1" / "run_info.json").read_text())
    assert info["model"] == str(tiny_model_dir) and info["code_version"]["stllm"]
    vcg = build_vcgbench(tmp_path / "vcg")
    out = tmp_path / "vcg_out"
    assert (
        eval_main(
            [
                str(CONFIGS / "vcgbench.yaml"),
                "--model",
                str(tiny_model_dir),
                f"data_root={vcg}",
                f"output_dir={out}",
                "frames.size=28",
                "frames.num_frames=4",
                "generation.max_new_tokens=3",
                "generation.max_length=60",
            ]
        )
        == 0
    )
    recs = read_records(out / "predictions.jsonl")
    assert len(recs) == 4 and "pred2" in recs[3] and recs[3]["prompt2"].endswith("Is the screen light? ###Assistant: ")
