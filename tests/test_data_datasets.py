"""InstructionDataset on a tiny VideoChat2-IT folder, bad-media policy, and the MetaLoader-style mixture sampler."""

from __future__ import annotations

import collections
import logging

import pytest
import torch

from stllm.data.config import DataConfig, DatasetSpec
from stllm.data.datasets import InstructionDataset, MetaLoaderBatchSampler, ShuffledBatchSampler, build_batch_sampler
from stllm.data.types import VideoQAItem
from stllm.data.video import MediaError
from tests.data_media import write_image, write_it_dataset, write_video

QA3 = [{"i": "Watch.", "q": f"q{k}", "a": f"a{k}"} for k in range(3)]


@pytest.fixture(scope="module")
def it_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("it")
    (root / "vids").mkdir()
    (root / "imgs").mkdir()
    for k in range(3):
        write_video(root / "vids" / f"v{k}.mp4", n=20 + 10 * k, fps=10)
    write_image(root / "imgs" / "i0.png")
    (root / "vids" / "broken.mp4").write_text("not a video")
    write_it_dataset(
        root,
        "vid",
        [
            {"video": "v0.mp4", "QA": QA3},
            {"video": "v1.mp4", "QA": [{"i": "", "q": "what?", "a": "this"}], "start": 0.5, "end": 2.0},
            {"video": "v2.mp4", "QA": QA3},
        ],
    )
    write_it_dataset(
        root,
        "bad",
        [
            {"video": "broken.mp4", "QA": QA3},
            {"video": "gone.mp4", "QA": QA3},
            {"video": "v0.mp4", "QA": QA3},
            {"no_media": 1},
        ],
    )
    write_it_dataset(root, "img", [{"image": "i0.png", "QA": QA3}])
    return root


def spec(name, media_root="vids", media_type="video", **kw):
    return DatasetSpec(
        name=name, annotation=f"{name}.json", media_root=media_root, media_type=media_type, num_frames=4, **kw
    )


def make(root, name, **kw):
    media_root = "imgs" if name == "img" else "vids"
    media_type = "image" if name == "img" else "video"
    return InstructionDataset(spec(name, media_root, media_type), str(root), anno_root="anno", image_size=32, **kw)


def test_video_items(it_root):
    ds = make(it_root, "vid", seed=1)
    assert len(ds) == 3
    item = ds[0]
    assert isinstance(item, VideoQAItem) and item.pixel_values.shape == (4, 3, 32, 32)
    assert item.pixel_values.dtype == torch.float32 and not item.is_image and item.dataset == "vid"
    assert item.instruction == "Watch." and (item.question, item.answer) in {(f"q{k}", f"a{k}") for k in range(3)}
    assert item.media.endswith("v0.mp4") and len(item.frame_indices) == 4
    # same seed/epoch/index -> same sample; the QA shuffle varies across epochs
    again = ds[0]
    assert again.question == item.question and torch.equal(again.pixel_values, item.pixel_values)
    questions = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        questions.add(ds[0].question)
    assert len(questions) > 1


def test_window_and_image(it_root):
    item = make(it_root, "vid")[1]
    assert all(5 <= i < 20 for i in item.frame_indices)  # [0.5 s, 2 s] at 10 fps: offset 5, vlen 15
    assert item.instruction == ""
    img = make(it_root, "img")[0]
    assert img.is_image and img.pixel_values.shape == (1, 3, 32, 32)


def test_eval_mode_is_deterministic_and_unshuffled(it_root):
    ds = make(it_root, "vid", train=False)
    a, b = ds[0], ds[0]
    assert a.question == "q0" and a.frame_indices == [2, 7, 12, 17]  # middle of [0,5,10,15,20]
    assert torch.equal(a.pixel_values, b.pixel_values)


def test_bad_media_is_logged_counted_and_replaced(it_root, caplog):
    ds = make(it_root, "bad", seed=0)
    assert len(ds) == 3  # the item without media is dropped at load time
    with caplog.at_level(logging.WARNING, logger="stllm.data.datasets"):
        items = [ds[0], ds[1]]
    assert all(it.media.endswith("v0.mp4") for it in items)  # the only good file
    replaced = [entry for it in items for entry in it.extra["bad_media"]]
    assert len(replaced) >= 2
    bad_files = {path.split("/")[-1] for path, _ in replaced}
    assert {"broken.mp4", "gone.mp4"} <= bad_files
    assert "broken.mp4" in caplog.text and "gone.mp4" in caplog.text
    assert all(torch.isfinite(it.pixel_values).all() and it.pixel_values.abs().sum() > 0 for it in items)


def test_bad_media_fail_policy_and_bounded_retries(it_root):
    with pytest.raises(MediaError, match="broken.mp4"):
        make(it_root, "bad", on_bad_media="fail")[0]
    write_it_dataset(it_root, "allbad", [{"video": "gone.mp4", "QA": QA3}])
    ds = InstructionDataset(spec("allbad"), str(it_root), anno_root="anno", max_retries=3)
    with pytest.raises(MediaError, match=r"4 bad media files in a row .*giving up after max_retries=3"):
        ds[0]


def test_missing_annotation(it_root):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        InstructionDataset(spec("nothere"), str(it_root), anno_root="anno")


# ---- mixture sampler (docs/original.md §4.6, Q20) ----


def dataset_of(index, sizes):
    bound = 0
    for d, n in enumerate(sizes):
        bound += n
        if index < bound:
            return d
    raise AssertionError(index)


def test_meta_loader_single_dataset_batches_and_coverage():
    sizes = [10, 25, 7]
    sampler = MetaLoaderBatchSampler(sizes, batch_size=3, seed=42)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 8 + 2  # drop_last per dataset
    for batch in batches:
        assert len(batch) == 3 and len({dataset_of(i, sizes) for i in batch}) == 1
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no repeats within a pass
    counts = collections.Counter(dataset_of(b[0], sizes) for b in batches)
    assert counts == {0: 3, 1: 8, 2: 2}


def test_meta_loader_proportions_determinism_and_epochs():
    sizes = [300, 100]
    sampler = MetaLoaderBatchSampler(sizes, batch_size=4, seed=1)
    order = sampler.dataset_order()
    assert order.count(0) == 75 and order.count(1) == 25
    assert order[:20].count(0) not in (0, 20)  # shuffled, not blocks
    first = list(sampler)
    assert first == list(MetaLoaderBatchSampler(sizes, batch_size=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(map(tuple, sampler)) != sorted(map(tuple, first))
    other = MetaLoaderBatchSampler(sizes, batch_size=4, seed=2)
    assert list(other) != first


def test_meta_loader_rank_sharding():
    sizes = [20, 9]
    ranks = [list(MetaLoaderBatchSampler(sizes, batch_size=2, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5 + 2
    for b0, b1 in zip(*ranks):  # every step draws from the same dataset on every rank
        assert dataset_of(b0[0], sizes) == dataset_of(b1[0], sizes)
    first_ds = [i for r in ranks for b in r for i in b if i < 20]
    assert len(first_ds) == len(set(first_ds)) == 20  # disjoint shards cover dataset 0


def test_shuffled_mixture_and_dataloader(it_root):
    datasets = [make(it_root, "vid"), make(it_root, "vid")]
    sizes = [len(d) for d in datasets]
    sampler = build_batch_sampler(sizes, batch_size=2, mixture="shuffled", seed=0)
    assert isinstance(sampler, ShuffledBatchSampler) and len(sampler) == 3
    assert sorted(i for b in sampler for i in b) == list(range(6))
    sampler = build_batch_sampler(sizes, batch_size=1, mixture="meta_loader", seed=0)
    assert type(sampler) is MetaLoaderBatchSampler
    concat = torch.utils.data.ConcatDataset(datasets)
    loader = torch.utils.data.DataLoader(concat, batch_sampler=sampler, collate_fn=list)
    batches = list(loader)
    assert len(batches) == 6 and all(isinstance(b[0], VideoQAItem) for b in batches)


def test_data_config_defaults():
    cfg = DataConfig()
    assert cfg.mixture == "meta_loader" and cfg.on_bad_media == "skip"
