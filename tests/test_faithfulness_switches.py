"""The switches of docs/faithfulness.md "Random streams and decoding": each reproduces the original's draws or text.

- mask_rng "original": np.random.seed(s) before a training forward gives the mask built by hand with the original's
  two calls in order (docs/original.md §2.1);
- fallback_rng "original": the 1-frame-segment fallback of `rand` sampling is np.random.permutation (§4.4);
- bos_placeholder: the processed scores of a chat-path greedy step follow transformers 4.28's repetition penalty
  over [placeholder] + generated ids (Q34);
- original_text: a prediction whose answer ends on end-of-sequence keeps "</s>"; the clean field does not (Q35);
- check_ans: a ground truth without text after its option is an item error, never a silent True (Q36).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from stllm.config import load_config
from stllm.data.processor import StllmProcessor
from stllm.data.sampling import FrameSampling, frame_indices
from stllm.data.tokenization import LlamaSentencePieceTokenizer
from stllm.eval.config import EvalConfig
from stllm.eval.metrics import AnswerFormatError, check_ans
from stllm.eval.predict import _record
from stllm.eval.protocols import EvalItem
from stllm.generation import GenerationConfig, strip_leading_special
from stllm.inference import AnswerText, PlaceholderRepetitionPenalty, decode_answer, decoding_kwargs
from stllm.models import modeling
from stllm.models.configuration import StllmConfig
from tests.eval_layouts import CONFIGS
from tests.helpers import REFERENCE
from tests.test_model_core import T, make_batch, make_model

LLAMA_TINY = REFERENCE / "tokenizers" / "llama_tiny" / "tokenizer.model"


# ------------------------------------------------------------------------------------------------ item 1: masks
def _original_masks(seed: int, batch: int, length: int) -> np.ndarray:
    """The original's RandomMaskingGenerator after its ratio draw, written out by hand (docs/original.md §2.1)."""
    np.random.seed(seed)
    ratio = np.clip(np.random.normal(0.5, 0.1), 0.1, 0.7)
    num_mask = int(ratio * length)
    rows = []
    for _ in range(batch):
        m = np.hstack([np.zeros(length - num_mask), np.ones(num_mask)])
        np.random.shuffle(m)
        rows.append(m)
    return np.array(rows).astype(bool)


def _spy_masks(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = modeling.check_dropped_tokens

    def spy(dropped, batch, length):
        seen.append(dropped.clone())
        return real(dropped, batch, length)

    monkeypatch.setattr(modeling, "check_dropped_tokens", spy)
    return seen


@pytest.mark.parametrize("seed", [0, 7, 1234])
def test_original_mask_stream_equals_hand_built_original_mask(monkeypatch, seed):
    model = make_model(use_mask=True, mask_rng="original").train()
    batch = make_batch(model)
    n_video = model.config.num_video_tokens(T)
    seen = _spy_masks(monkeypatch)
    np.random.seed(seed)
    out = model(**batch)
    state_after_forward = np.random.get_state(legacy=False)
    want = _original_masks(seed, 2, n_video)
    assert np.array_equal(seen[0].cpu().numpy(), want)
    # the forward consumed exactly the original's draws: the global state is where the hand-built calls left it
    after_hand_calls = np.random.get_state(legacy=False)
    assert np.array_equal(state_after_forward["state"]["key"], after_hand_calls["state"]["key"])
    assert state_after_forward["state"]["pos"] == after_hand_calls["state"]["pos"]
    assert state_after_forward["has_gauss"] == after_hand_calls["has_gauss"]  # normal() caches its second draw
    # and the loss is the one of a forward given that mask
    given = model(**batch, dropped_tokens=torch.from_numpy(want))
    assert torch.allclose(out.loss, given.loss, atol=1e-6)


def test_default_mask_stream_ignores_numpy_global_state(monkeypatch):
    """mask_rng "stllm": masks follow seed_masking only (what makes a resumed run draw the same masks)."""
    model = make_model(use_mask=True).train()
    assert model.config.mask_rng == "stllm"
    batch = make_batch(model)
    seen = _spy_masks(monkeypatch)
    for np_seed in (0, 1):
        np.random.seed(np_seed)
        model.seed_masking(5)
        model(**batch)
    assert torch.equal(seen[0], seen[1])


def test_mask_rng_setting_is_validated():
    with pytest.raises(ValueError, match="mask_rng"):
        make_model(mask_rng="numpy")


# --------------------------------------------------------------------------------- item 1: sampler fallback
def test_original_fallback_draws_numpy_global_permutation():
    # 10 frames in 8 segments: linspace gives segments of one frame, so `rand` falls back (docs/original.md §4.4)
    sampling = FrameSampling(num_frames=8, mode="rand", fallback_rng="original")
    np.random.seed(3)
    got = frame_indices(sampling, 10, 30.0, rng=np.random.default_rng(0))
    np.random.seed(3)
    want = sorted(int(i) for i in np.random.permutation(10)[:8])
    assert got == want
    with pytest.raises(ValueError, match="fallback_rng"):
        FrameSampling(fallback_rng="python")


# ---------------------------------------------------------------------- item 2: BOS placeholder + penalty
def _penalised_by_hand(logits: torch.Tensor, ids: list[int], penalty: float) -> torch.Tensor:
    """transformers 4.28 RepetitionPenaltyLogitsProcessor, element by element: every distinct id in `ids` once."""
    out = logits.clone()
    for i in set(ids):
        s = float(logits[0, i])
        out[0, i] = s * penalty if s < 0 else s / penalty
    return out


@pytest.mark.parametrize("placeholder", [True, False])
def test_chat_path_greedy_scores_follow_the_428_rule(placeholder):
    model = make_model(seed=5).eval()
    c = model.config
    ids = torch.tensor([[c.video_token_id] * c.num_video_tokens(4) + [2, 5, 6, 7]])
    px = torch.randn(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    gen = GenerationConfig(num_beams=1, max_new_tokens=6, repetition_penalty=1.5, bos_placeholder=placeholder)
    kwargs = decoding_kwargs(gen)
    out: Any = model.generate(  # a GenerateDecoderOnlyOutput with return_dict_in_generate
        input_ids=ids,
        pixel_values=px,
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=None,  # run all six steps, so later steps see generated ids
        **kwargs,
    )
    new = out.sequences[0].tolist()
    assert len(out.scores) == len(new) == 6
    for k, (scores, logits) in enumerate(zip(out.scores, out.logits)):
        seen = ([gen.bos_placeholder_id] if placeholder else []) + new[:k]
        want = _penalised_by_hand(logits.float(), seen, 1.5)
        assert torch.allclose(scores, want, atol=1e-6), k
        assert int(scores.argmax(-1)) == new[k]
    # the placeholder id (1) is penalised at every step exactly when the switch is on
    raw, proc = out.logits[0][0, 1], out.scores[0][0, 1]
    assert (proc != raw) if placeholder else (proc == raw)


def test_placeholder_processor_is_the_default_and_replaces_transformers_penalty():
    kw = decoding_kwargs(GenerationConfig(repetition_penalty=1.5))
    assert kw["repetition_penalty"] == 1.0
    (proc,) = kw["logits_processor"]
    assert isinstance(proc, PlaceholderRepetitionPenalty) and proc.placeholder_id == 1 and proc.penalty == 1.5
    assert "logits_processor" not in decoding_kwargs(GenerationConfig(repetition_penalty=1.0))
    off = decoding_kwargs(GenerationConfig(repetition_penalty=1.5, bos_placeholder=False))
    assert off["repetition_penalty"] == 1.5 and "logits_processor" not in off


def test_leading_id_rule_runs_on_placeholder_plus_ids():
    """4.28 returned [1, new...]: the original's "drop 0, then drop 1" removed only the placeholder."""
    assert strip_leading_special([1, 5], placeholder=1) == [1, 5]
    assert strip_leading_special([0, 5], placeholder=1) == [0, 5]
    assert strip_leading_special([1, 5]) == [5] and strip_leading_special([0, 1, 5]) == [5]


# ------------------------------------------------------------------------------------- item 3: decoded text
def _reference_tokenizer() -> LlamaSentencePieceTokenizer:
    # the original's InstructBLIP-base setup: bos = eos = unk = "</s>" (2), "[PAD]" added (512)
    return LlamaSentencePieceTokenizer(LLAMA_TINY)


def test_original_decode_follows_the_428_slow_tokenizer_rule():
    tok = _reference_tokenizer()
    ids = tok.encode("A) the man is sitting.")
    clean = tok.decode(ids)
    assert clean == "A) the man is sitting."
    # "</s>" is a special string: appended as text, the pending space goes *before* the decoded pieces
    assert tok.decode(ids + [2], original=True) == " " + clean + "</s>"
    assert tok.decode(ids + [2]) == clean
    # first piece special: no space; the next "▁A" loses its space as the start of a sentencepiece decode
    assert tok.decode([2] + ids, original=True) == "</s>" + clean
    # id 0 is no longer the unk string: sentencepiece renders it as " \u2047 "; id 1 ("<s>") renders as nothing
    assert tok.decode([0] + ids, original=True) == " \u2047  " + clean
    assert tok.decode([1] + ids, original=True) == clean
    # added tokens split the ids into runs joined with single spaces (spaces_between_special_tokens=True)
    pad = tok.pad_token_id
    assert tok.decode(ids + [pad] + ids, original=True) == clean + " [PAD] " + clean
    assert tok.decode(ids + [2, 2], original=True) == " " + clean + "</s></s>"


def test_original_decode_on_a_real_32000_piece_model():
    """The same rules on a Llama-family 32000-piece model (<unk> 0, <s> 1, </s> 2, byte fallback), as shipped in
    the mistral-common wheel (tests/test_processor.py)."""
    from tests.test_processor import _package_file

    tok = LlamaSentencePieceTokenizer(_package_file("mistral_common", "data/tokenizer.model.v1"))
    ids = tok.encode("The man opens the door.\nThen he leaves.")
    clean = tok.decode(ids)
    assert clean == "The man opens the door.\nThen he leaves."
    assert tok.decode(ids + [2], original=True) == " " + clean + "</s>"
    assert tok.decode([0] + ids, original=True) == " \u2047  " + clean
    assert tok.decode(ids + [tok.pad_token_id, 2], original=True) == clean + " [PAD] </s>"


def test_prediction_keeps_the_original_eos_text_and_stores_the_clean_text(tiny_model_dir):
    processor = StllmProcessor.from_pretrained(tiny_model_dir, StllmConfig.from_pretrained(tiny_model_dir))
    eos = processor.tokenizer.eos_token_id
    ids = processor.tokenizer.encode("a red ball") + [eos]
    answer = decode_answer(processor, ids, GenerationConfig())
    assert isinstance(answer, AnswerText) and answer == "a red ball" and answer.original.endswith("</s>")
    item = EvalItem("q1", 0, "msvd_qa", "msvd_qa", "v.mp4", "what is shown?", "a ball")
    cfg = load_config(EvalConfig, CONFIGS / "msvd_qa.yaml")
    rec = _record(item, cfg, [0, 1], [("prompt", "what is shown?")], [answer])
    assert rec["pred"].endswith("</s>") and rec["pred"].strip() == "a red ball</s>"
    assert rec["pred_clean"] == "a red ball" and rec["raw_clean"] == "a red ball"
    mc = load_config(EvalConfig, CONFIGS / "mvbench.yaml")
    rec = _record(item, mc, [0], [("prompt", "q")], [decode_answer(processor, ids, mc.generation)])
    assert rec["pred"] == "(a red ball</s>" and rec["pred_clean"] == "(a red ball"
    # switch off: predictions hold the clean text
    cfg.generation.original_text = False
    rec = _record(item, cfg, [0, 1], [("prompt", "what is shown?")], [answer])
    assert rec["pred"] == rec["pred_clean"] == "a red ball"


# ----------------------------------------------------------------------------------------- item 4: check_ans
@pytest.mark.parametrize("gt", ["(A)", "(A) ", "(a)"])
def test_check_ans_ground_truth_without_text_is_an_item_error(gt):
    with pytest.raises(AnswerFormatError, match="no text after its option"):
        check_ans("(A) walking", gt)
    assert issubclass(AnswerFormatError, ValueError)


def test_check_ans_two_trailing_spaces_is_scored_as_the_original_did():
    # "(A)  ".split(" ") -> ["(a)", "", ""]: the original's gt_content is " ", so no IndexError there
    assert check_ans("(A)", "(A)  ") is True


# ------------------------------------------------------------------------------- bad switch values (contract)
def test_bad_mask_rng_in_a_training_config_is_one_line_naming_the_key(tmp_path):
    """docs/reliability.md (Configuration): `stllm train` with model.config.mask_rng=numpy exits 2, one line."""
    from stllm.quickstart.toydata import write_drawn_dataset
    from stllm.testing import build_tiny_model_dir
    from tests.faults import REPO, assert_user_error, run_cli

    init = build_tiny_model_dir(tmp_path / "init", seed=0)
    write_drawn_dataset(tmp_path / "toy", num=2)
    run = run_cli(
        "train",
        str(REPO / "configs" / "train" / "tiny.yaml"),
        f"model.init_from={init}",
        f"data.data_root={tmp_path / 'toy'}",
        f"train.output_dir={tmp_path / 'out'}",
        "model.config.mask_rng=numpy",
    )
    assert_user_error(run, "model.config.mask_rng", "'stllm' or 'original'")
    assert not (tmp_path / "out" / "model.safetensors").exists()
