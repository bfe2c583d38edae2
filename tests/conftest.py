"""Session fixtures: a tiny model directory built offline (tokenizers trained in-process), test settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model + processor (all tokens, masking + MVM on, no BT-Adapter)."""
    from stllm.testing import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """A chat engine on the tiny model, one per test module (the demos' tests share it)."""
    from stllm.demo.engine import ChatEngine

    return ChatEngine.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A drawn 30-frame mp4, one per test module."""
    from tests.data_media import write_video

    return write_video(tmp_path_factory.mktemp("drawn") / "drawn.mp4", n=30)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests are skipped, saying why, on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker: gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """8 drawn training videos + anno/toy.json (the toy-data command's layout), one per test module."""
    from stllm.quickstart.toydata import write_drawn_dataset

    root = tmp_path_factory.mktemp("toy")
    write_drawn_dataset(root, num=8)
    return root


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    """The training start of the tiny recipe (seed 42, the recipe's train.seed), one per test module."""
    from stllm.testing import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_init"), seed=42)
