"""Batched evaluation answers exactly as batch 1: per-item stopping, left padding, frame counts that differ inside
a batch, decode workers ahead of the model (docs/evaluation.md, "Throughput")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stllm.config import load_config
from stllm.eval.config import EvalConfig
from stllm.eval.predict import run
from stllm.eval.records import read_records
from stllm.inference import StopEachItemOnItsFirstRow, StopOnFirstRow
from tests.eval_layouts import CONFIGS, build_mcqa, fake_answerer, write_video

TASKS = "only_tasks=[action_sequence,action_antonym,fine_grained_action,episodic_reasoning]"


def test_each_item_stops_on_its_own_first_row() -> None:
    seqs = [[7], [8, 9]]
    per_item, first_row = StopEachItemOnItsFirstRow(seqs, 2), StopOnFirstRow(seqs)
    assert per_item(torch.tensor([[1, 2], [1, 7]]), None).tolist() == [False, True]  # type: ignore[arg-type]
    assert per_item(torch.tensor([[8, 9], [1, 2]]), None).tolist() == [True, False]  # type: ignore[arg-type]
    # beams: 2 items x 2 rows; an item's rows follow its first row only (docs/faithfulness.md Q30 per item)
    beams = torch.tensor([[1, 7], [1, 2], [1, 2], [1, 7]])
    assert per_item(beams, None).tolist() == [True, True, False, False]  # type: ignore[arg-type]
    # batch 1: the original's rule exactly
    one = StopEachItemOnItsFirstRow(seqs, 1)
    for rows in ([[1, 7], [1, 2]], [[1, 2], [8, 9]], [[8, 9], [0, 0]], [[3, 3], [3, 3]]):
        t = torch.tensor(rows)
        assert one(t, None).tolist() == first_row(t, None).tolist()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 items; one clip is 10 s long, so the fps-1 rule gives it 9-10 frames against 4 for the others."""
    root = build_mcqa(tmp_path_factory.mktemp("mixed"), per_task=2)
    write_video(root / "video" / "ssv2_video" / "action_antonym_1.mp4", n_frames=80, fps=8)
    return root


def _answers(root: Path, out: Path, model: str, workers: int, *extra: str, answerer=None) -> list[tuple]:
    cfg = load_config(
        EvalConfig,
        CONFIGS / "mvbench.yaml",
        [f"data_root={root}", f"output_dir={out}", "frames.num_frames=0", TASKS, *extra],
    )
    run(cfg, model, answerer, num_workers=workers)
    return [(r["id"], len(r["frame_indices"]), r["raw"], r["pred"]) for r in read_records(out / "predictions.jsonl")]


def test_batch_4_equals_batch_1_on_the_tiny_model(tiny_model_dir: Path, mixed_root: Path, tmp_path: Path) -> None:
    gen = ["generation.max_new_tokens=12"]
    one = _answers(mixed_root, tmp_path / "b1", str(tiny_model_dir), 0, "batch_size=1", *gen)
    four = _answers(mixed_root, tmp_path / "b4", str(tiny_model_dir), 2, "batch_size=4", *gen)
    assert len(one) == 8 and len({n for _, n, _, _ in one}) == 2  # two frame counts inside the batches
    assert four == one


def test_workers_give_the_same_lines_as_in_process(mixed_root: Path, tmp_path: Path) -> None:
    a = _answers(mixed_root, tmp_path / "w0", "fake-model", 0, "batch_size=3", answerer=fake_answerer)
    b = _answers(mixed_root, tmp_path / "w2", "fake-model", 2, "batch_size=3", answerer=fake_answerer)
    assert a == b and len(a) == 8
