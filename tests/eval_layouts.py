"""Test helpers: tiny benchmark folders in each official layout (videos written with PyAV) + a fake answerer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "eval"


def write_video(path: Path, n_frames: int = 24, fps: int = 8, size: tuple[int, int] = (64, 48)) -> Path:
    """A small mpeg4 clip whose frame k is a flat grey of level 8*k (frame numbers readable from pixels)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(n_frames):
            img = np.full((h, w, 3), (8 * k) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_frame_folder(path: Path, n: int = 30, size: tuple[int, int] = (64, 48)) -> Path:
    """MVBench tvqa-style folder: 1-based 00001.jpg ... (docs/original.md §7.2)."""
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for k in range(1, n + 1):
        Image.fromarray(np.full((size[1], size[0], 3), (5 * k) % 256, dtype=np.uint8)).save(path / f"{k:05d}.jpg")
    return path


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def build_mcqa(root: Path, config: str = "mvbench.yaml", per_task: int = 1) -> Path:
    """Every task of the YAML's task table, `per_task` items each, media where the table says."""
    cfg = yaml.safe_load((CONFIGS / config).read_text())
    tasks = cfg["tasks"] if "tasks" in cfg else yaml.safe_load((CONFIGS / cfg["_base_"]).read_text())["tasks"]
    clip = write_video(root / "_src.mp4")
    for t in tasks:
        rows = []
        for i in range(per_task):
            row = {
                "video": f"{t['json'][:-5]}_{i}.mp4",
                "question": f"What happens in {t['name']} {i}?",
                "candidates": ["walking", "running", "sitting"],
                "answer": ["walking", "running", "sitting"][i % 3],
            }
            if t["bound"]:
                row.update(start=0.5, end=2.5)
            if t["data_type"] == "frame":
                row["video"] = f"clip_{i}"
                write_frame_folder(root / t["media"] / row["video"])
            else:
                _copy(clip, root / t["media"] / row["video"])
            rows.append(row)
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / t["json"]).write_text(json.dumps(rows))
    return root


def build_vcgbench(root: Path) -> Path:
    clip = write_video(root / "_src.mp4")
    _copy(clip, root / "Test_Videos" / "v_a.mp4")
    _copy(clip, root / "Test_Videos" / "v_b.mkv")
    qa = root / "Benchmarking_QA"
    qa.mkdir(parents=True, exist_ok=True)
    (qa / "generic_qa.json").write_text(
        json.dumps(
            [
                {"video_name": "v_a", "Q": "What is shown?", "A": "A grey screen."},
                {"video_name": "v_b", "Q": "What colour?", "A": "Grey."},
            ]
        )
    )
    (qa / "temporal_qa.json").write_text(json.dumps([{"video_name": "v_a", "Q": "What happens first?", "A": "Dark."}]))
    (qa / "consistency_qa.json").write_text(
        json.dumps(
            [{"video_name": "v_b", "Q1": "Is it bright?", "Q2": "Is the screen light?", "A": "It gets brighter."}]
        )
    )
    return root


def build_open_qa(root: Path, layout: str) -> Path:
    """msvd | msrvtt | anet layouts of docs/original.md §7.4."""
    clip = write_video(root / "_src.mp4")
    if layout == "msvd":
        _copy(clip, root / "videos" / "vid1.avi")
        (root / "test_qa.json").write_text(
            json.dumps(
                [
                    {"video_name": "vid1.avi", "question_id": 10, "question": "what is it?", "answer": "screen"},
                    {"video": "vid1.avi", "id": 11, "question": "is it dark?", "answer": "yes"},
                ]
            )
        )
    elif layout == "msrvtt":
        _copy(clip, root / "videos" / "video7.mp4")
        (root / "test_qa.json").write_text(
            json.dumps(
                [
                    {"video_id": "video7", "question": "what is it?", "answer": "screen"},
                    {"video_id": "video7", "question": "who is there?", "answer": "nobody"},
                ]
            )
        )
    else:
        _copy(clip, root / "all_test" / "v_abc.mp4")  # the annotation says "abc": no prefix, no extension
        (root / "test_q.json").write_text(
            json.dumps(
                [
                    {"question_id": "v_abc_0", "video_name": "abc", "question": "what is it"},
                    {"question_id": "v_abc_1", "video_name": "abc", "question": "is it dark"},
                ]
            )
        )
        (root / "test_a.json").write_text(json.dumps([{"answer": "screen", "type": 0}, {"answer": "yes", "type": 3}]))
    return root


def fake_text(prompt: str) -> str:
    """Deterministic 'model output' for a prompt: an option letter answer or a short sentence, then junk
    after '###' that the docs/original.md §7.0 cut must remove."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if prompt.rstrip().endswith("Best option:("):
        return f"{'ABC'[h % 3]}) something\nmore text###Human: ignored"
    return f" Assistant: the answer is {h % 97}.###Human: junk"


def fake_answerer(pixel_values: torch.Tensor, prompts: list[str], qformer_texts: list[str]) -> list[str]:
    assert pixel_values.ndim == 5 and pixel_values.shape[0] == len(prompts) == len(qformer_texts)
    return [fake_text(p) for p in prompts]
