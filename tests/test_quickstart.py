"""The quickstart end to end in --fast mode (pipeline only: no accuracy is asserted), its synthetic data, the
language pretraining that stands in for Vicuna's and the alignment that stands in for InstructBLIP's towers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from stllm.quickstart.drawing import COLUMNS, EMPTY_FRAME, TASKS, build_dataset, corpus_words
from stllm.quickstart.run import LLM, QUERY_TOKENS
from stllm.quickstart.run import main as quickstart_main


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory):
    """The quickstart's base model (4-layer LLM, 2 query tokens per frame, tokenizer with the frame words)."""
    from stllm.testing import build_tiny_model_dir

    return build_tiny_model_dir(
        tmp_path_factory.mktemp("qs_base"),
        seed=0,
        extra_text=corpus_words(),
        vocab_size=600,
        vision={"image_size": 56},
        text=LLM,
        num_query_tokens=QUERY_TOKENS,
        num_frames=8,
    )


def test_temporal_classes_are_time_reversals_and_colour_is_static():
    """Mean pooling is blind by construction: reversing a temporal clip gives the other answer's clip."""
    for task, (draw, temporal) in TASKS.items():
        clip = draw(random.Random(3), 16, 64)
        if temporal:
            assert not np.array_equal(clip.frames, clip.frames[::-1]), task
            # the frame multiset (all a pooling model can see) is the same forwards and backwards
            assert np.array_equal(
                np.sort(clip.frames.reshape(16, -1), axis=0), np.sort(clip.frames[::-1].reshape(16, -1), axis=0)
            )
        else:
            assert all(np.array_equal(f, clip.frames[0]) for f in clip.frames), task


def test_frame_words_tell_the_same_story_as_the_pixels():
    """The words are the clip in text: same time reversal for temporal tasks, constant for the static one."""
    rng = random.Random(11)
    for _ in range(20):
        for task, (draw, temporal) in TASKS.items():
            clip = draw(rng, 8, 64)
            assert len(clip.words) == 8, task
            for phrase in clip.words:
                colour, column = phrase.split()
                assert phrase == EMPTY_FRAME or column in COLUMNS, phrase
            if task == "colour":
                assert set(clip.words) == {f"{clip.answer} {clip.words[0].split()[1]}"}
            elif task == "order":
                assert clip.words[0].startswith(clip.answer) and not clip.words[-1].startswith(clip.answer)
            elif task == "enter_leave":
                # empty for a stretch at one end (>= 2 of 8 frames), so half the tokens masked still tell
                assert clip.words.count(EMPTY_FRAME) >= 2, clip.words
                assert (clip.words[0] == EMPTY_FRAME) == (clip.answer == "enters") != (clip.words[-1] == EMPTY_FRAME)
            else:  # direction: the column index never decreases when moving right
                cols = [COLUMNS.index(p.split()[1]) for p in clip.words]
                moving = cols if clip.answer == "right" else cols[::-1]
                assert moving == sorted(moving) and moving[0] < moving[-1], (clip.words, clip.answer)
            assert temporal == (task != "colour")


def test_text_example_puts_the_frame_words_where_the_video_goes(quickstart_model):
    from stllm.data.processor import StllmProcessor
    from stllm.models.configuration import StllmConfig
    from stllm.quickstart.language import text_example

    processor = StllmProcessor.from_pretrained(quickstart_model, StllmConfig.from_pretrained(quickstart_model))
    sp = processor.tokenizer.sp
    for word in [*COLUMNS, "none", "red", "green", "blue", "yellow"]:  # one token each, as one query token
        assert len(processor.tokenizer.encode(word)) == 1, word
    for seed in range(8):
        example, task, at = text_example(processor, random.Random(seed), frames=8)
        ids, labels = example["input_ids"], example["labels"]
        assert processor.config.video_token_id not in ids and len(ids) == len(labels)
        words = processor.decode(ids[:16]).split()  # 8 frames x 2 words, then the prompt as with video tokens
        video_prompt = processor.build_prompt_ids("<ImageHere>###Human: hi", 1)
        after_video = video_prompt[video_prompt.index(processor.config.video_token_id) + QUERY_TOKENS]
        assert len(words) == 16 and words[1] in COLUMNS + ("none",) and ids[16] == after_video
        answer = [i for i, label in zip(ids, labels) if label != -100]
        assert processor.decode(answer).startswith("Best option:(") and labels[at] == ids[at]
        assert sp.id_to_piece(ids[at]) in ("A", "B") and task in TASKS


def test_word_dropout_drops_a_masking_share_of_the_frame_words_in_order(quickstart_model):
    from stllm.data.processor import StllmProcessor
    from stllm.models.configuration import StllmConfig
    from stllm.quickstart.language import text_example

    processor = StllmProcessor.from_pretrained(quickstart_model, StllmConfig.from_pretrained(quickstart_model))
    for seed in range(20):
        full, task, at = text_example(processor, random.Random(seed), frames=8)
        kept, task2, at2 = text_example(processor, random.Random(seed), frames=8, word_dropout=1.0)
        assert task2 == task
        lost = len(full["input_ids"]) - len(kept["input_ids"])
        assert int(0.1 * 16) <= lost <= int(0.7 * 16) and at2 == at - lost  # 8 frames x 2 words, ratio in [0.1, 0.7]
        words, rest = full["input_ids"][:16], kept["input_ids"][: 16 - lost]
        it = iter(words)
        assert all(any(t == w for w in it) for t in rest)  # a subsequence: the kept words stay in order
        assert kept["input_ids"][16 - lost :] == full["input_ids"][16:]  # the prompt and answer are untouched
        assert kept["labels"][16 - lost :] == full["labels"][16:]


def test_language_pretraining_changes_only_the_llm(quickstart_model, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from stllm.quickstart.language import pretrain_language_model

    model_dir = tmp_path / "m"
    shutil.copytree(quickstart_model, model_dir)
    before = load_file(model_dir / "model.safetensors")
    accuracy, steps = pretrain_language_model(model_dir, max_steps=3, seed=0, frames=8, batch_size=4, progress=False)
    after = load_file(model_dir / "model.safetensors")
    assert steps == 3 and set(accuracy) == set(TASKS) and all(0 <= v <= 100 for v in accuracy.values())
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("language_model.") for k in changed), sorted(changed)[:5]


def test_alignment_trains_the_towers_towards_the_frame_words(quickstart_model, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from stllm.data.processor import StllmProcessor
    from stllm.models.configuration import StllmConfig
    from stllm.quickstart.alignment import SLOTS, align_towers, frame_batch

    processor = StllmProcessor.from_pretrained(quickstart_model, StllmConfig.from_pretrained(quickstart_model))
    pixels, texts, ids = frame_batch(processor, random.Random(0), 64, 56, batch_size=3, clip_frames=16)
    assert pixels.shape == (3, 1, 3, 56, 56) and len(texts) == 3 and ids.shape == (3, len(SLOTS))
    assert all(t.startswith("Question: ") for t in texts)
    words = [processor.decode(row).split() for row in ids.tolist()]
    assert all(len(w) == 2 and w[1] in COLUMNS + ("none",) for w in words), words

    model_dir = tmp_path / "m"
    shutil.copytree(quickstart_model, model_dir)
    before = load_file(model_dir / "model.safetensors")
    accuracy = align_towers(model_dir, steps=2, seed=0, image_size=56, batch_size=4, progress=False)
    after = load_file(model_dir / "model.safetensors")
    assert set(accuracy) == set(SLOTS) and all(0 <= v <= 100 for v in accuracy.values())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("language_model.") for k in changed)
    for prefix in ("vision_model.", "qformer.", "language_projection.", "query_tokens"):
        assert any(k.startswith(prefix) for k in changed), prefix
    pos = after["vision_model.embeddings.position_embedding"]
    assert 0.8 < pos.std().item() < 1.2  # redrawn at unit scale (module docstring)


def test_alignment_needs_one_query_token_per_frame_word(tmp_path):
    from stllm.quickstart.alignment import align_towers
    from stllm.testing import build_tiny_model_dir

    model_dir = build_tiny_model_dir(
        tmp_path / "m4", extra_text=corpus_words(), vocab_size=600, vision={"image_size": 56}, num_query_tokens=4
    )
    with pytest.raises(ValueError, match="num_query_tokens=4"):
        align_towers(model_dir, steps=1, seed=0, image_size=56, progress=False)


def test_written_videos_decode_to_the_drawn_pixels(tmp_path):
    """Our BT.601 conversion + lossless x264: a reader gets the drawn frames back within chroma rounding."""
    import av

    from stllm.quickstart.drawing import write_mp4

    for task, (draw, _) in TASKS.items():
        clip = draw(random.Random(5), 16, 64)
        write_mp4(clip.frames, tmp_path / f"{task}.mp4")
        with av.open(str(tmp_path / f"{task}.mp4")) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        error = np.abs(decoded.astype(int) - clip.frames)
        assert decoded.shape == clip.frames.shape and np.median(error) == 0, task
        # off by more than rounding only where a square's edge splits a 2 x 2 chroma block (4:2:0)
        assert (error.max(-1) > 3).mean() < 0.03, task


def test_training_and_mvbench_samplers_see_every_drawn_frame_once(tmp_path):
    """8 drawn frames held for 3: both samplers of the 8-frame model take each drawn frame exactly once, so a
    temporal clip and its reversal give a pooling model the same frames (build_dataset's docstring)."""
    from stllm.data.sampling import FrameSampling
    from stllm.data.video import read_clip

    paths = build_dataset(tmp_path, seed=3, train_per_task=1, eval_per_task=1)
    for video in sorted(paths["eval_media"].glob("*.mp4")):
        seen = read_clip(video, FrameSampling(num_frames=8, mode="mvbench"))
        assert seen.total_frames == 24 and [i // 3 for i in seen.indices] == list(range(8)), video.name
        for seed in range(4):
            drawn = read_clip(video, FrameSampling(num_frames=8, mode="rand"), rng=random.Random(seed))
            assert [i // 3 for i in drawn.indices] == list(range(8)) and np.array_equal(drawn.frames, seen.frames)
    with pytest.raises(ValueError, match="multiple of hold"):
        build_dataset(tmp_path / "x", frames=16, hold=3)


def test_dataset_layouts_are_deterministic(tmp_path):
    a = build_dataset(tmp_path / "a", seed=7, train_per_task=3, eval_per_task=2)
    b = build_dataset(tmp_path / "b", seed=7, train_per_task=3, eval_per_task=2)
    assert a["train_annotations"].read_text() == b["train_annotations"].read_text()
    videos = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(videos) == 5 * len(TASKS)  # byte for byte: the encoder runs on one thread (write_mp4)
    assert all((tmp_path / "a" / v).read_bytes() == (tmp_path / "b" / v).read_bytes() for v in videos)
    items = json.loads(a["train_annotations"].read_text())
    assert len(items) == 3 * len(TASKS) and all(set(i) >= {"video", "QA"} for i in items)
    assert items[0]["QA"][0]["a"].startswith("Best option:(")
    for item in items:  # both option orders, the same answer under the other letter
        (q1, a1), (q2, a2) = [(t["q"], t["a"]) for t in item["QA"]]
        assert a1[: len("Best option:(A)")] != a2[: len("Best option:(A)")] and a1[15:] == a2[15:] and q1 != q2
    for task in TASKS:
        rows = json.loads((a["eval_json"] / f"{task}.json").read_text())
        assert len(rows) == 2 and all(r["answer"] in r["candidates"] for r in rows)
        assert all((a["eval_media"] / r["video"]).is_file() for r in rows)


def test_fast_quickstart_runs_end_to_end(tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "qs"
    assert quickstart_main(["--fast", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["language_pretraining_letter_accuracy_percent"]) == set(TASKS)
    assert set(results["alignment_word_accuracy_percent"]) == {"colour", "column"}
    for key in ("mvbench_strict_accuracy_percent", "answer_accuracy_percent"):
        assert set(results[key]) == {"all", "all+mask+MVM", "mean"}
        for acc in results[key].values():
            assert set(acc) == set(TASKS) and all(0 <= v <= 100 for v in acc.values())
    assert (out / "quickstart_accuracy.png").stat().st_size > 1000
    base = load_file(out / "base_model" / "model.safetensors")
    for variant in ("all", "all_mask_MVM", "mean"):
        trained = load_file(out / "models" / variant / "model.safetensors")
        changed = {k for k in base if not torch.equal(base[k], trained[k])}  # the paper's split: towers frozen
        assert not any(k.startswith(("vision_model.", "qformer.", "query_tokens")) for k in changed), variant
        assert any(k.startswith("language_model.") for k in changed), variant
        assert (out / "models" / variant / "config.json").is_file()
        assert (out / "eval" / variant / "predictions.jsonl").is_file()
        assert "$ python -m stllm score" in (out / "logs" / f"{variant}.log").read_text()
    printed = capsys.readouterr().out
    assert printed.count("| variant |") == 2 and "quickstart_accuracy.png" in printed
