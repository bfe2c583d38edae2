"""`python -m stllm bench gpu`: the same command at tiny size on a CPU (table, JSON and markdown fields); the full-size
run on a CUDA GPU (marker gpu)."""

from __future__ import annotations

import json

import pytest

from stllm.bench_gpu import CANDIDATES, QUESTION, device_peak_flops, load_protocol, main, mcqa_text
from tests.faults import REPO, assert_user_error, run_cli

TRAIN_FIELDS = {"attention", "checkpointing", "batch", "status"}
OK_FIELDS = {"step_s", "fwd_bwd_s", "optimizer_s", "tokens_per_s", "tflops_per_step", "mfu", "peak_gib", "loss"}


def test_tiny_run_writes_table_json_and_markdown(tmp_path, capsys):
    assert main(["--size", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert (tmp_path / "bench_gpu.md").read_text() in printed
    assert result["mode"] == "tiny" and result["device"] == "cpu"
    n = result["numerics"]
    assert n["finite"] and 0 < n["rel_error"] < 0.05 and n["argmax_agreement"] > 0.9  # bf16 vs fp32 logits
    rows = result["train"]
    assert {r["attention"] for r in rows} == {"sdpa"}  # flash-attention 2 only on CUDA
    assert all(TRAIN_FIELDS <= set(r) for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, rows  # the first configuration always runs, whatever the time budget
    assert all(OK_FIELDS <= set(r) and r["finite"] and r["step_s"] > 0 for r in ok)
    assert ok[0]["tflops_counted"] > 0 and ok[0]["mfu"] is None  # no bf16 peak for a CPU
    assert all(r["status"] in ("ok", "OOM", "skipped (time)") for r in rows)
    e = result["eval"]
    assert e["items_per_s_batch1"] > 0 and e["hours_4000_best"] > 0 and e["best_batch"] >= 1
    assert result["chat"]["status"] == "ok" and result["chat"]["frames"] == 64
    assert "| attention | checkpointing | batch |" in printed and "4,000 items" in printed


def test_peak_table_by_device_name(monkeypatch):
    import torch

    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
                       ("NVIDIA H100 PCIe", 756e12), ("Tesla T4", None)]:  # fmt: skip
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, n=name: n)
        assert device_peak_flops("cuda") == (name, peak)
    assert device_peak_flops("cpu") == ("cpu", None)


def test_full_size_without_cuda_is_a_user_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = run_cli("bench", "gpu", "--size", "full", "--device", "cpu", timeout=120)
    assert_user_error(run, "--size full", "CUDA")


@pytest.mark.gpu
def test_full_size_run_on_cuda(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["mode"] == "full" and result["numerics"]["finite"]
    assert sum(result["seconds"].values()) < 8 * 60


@pytest.mark.parametrize("name", ["mvbench", "vcgbench"])
def test_prompts_are_the_evaluation_harness_prompts(name):
    """bench gpu measures the harness's own prompts and decoding, read from the benchmark YAMLs."""
    from stllm.config import load_config
    from stllm.eval.config import EvalConfig
    from stllm.eval.prompts import build_prompt, mcqa_question

    cfg = load_config(EvalConfig, REPO / "configs" / "eval" / f"{name}.yaml")
    question = mcqa_question(QUESTION, CANDIDATES, CANDIDATES[1])[0]
    assert mcqa_text(QUESTION, CANDIDATES) == question
    protocol = load_protocol(name)
    assert protocol.build(question) == build_prompt(question, cfg.prompt)
    assert protocol.generation == cfg.generation
