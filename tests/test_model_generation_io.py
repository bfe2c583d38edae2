"""Generation (KV cache vs a no-cache loop, batching, stops, truncation), save/load round trips, bad input."""

from __future__ import annotations

import pytest
import torch

from stllm.inference import StopOnFirstRow
from stllm.models.modeling import StllmForConditionalGeneration
from tests.test_model_core import make_batch, make_model


def _prompt(model, frames=4, extra=(5, 6, 7)):
    c = model.config
    return torch.tensor([[c.video_token_id] * c.num_video_tokens(frames) + [2, *extra]])


def _greedy_no_cache(model, input_ids, pixel_values, steps):
    """The plainest possible decoder: re-run the whole sequence every step, take the argmax."""
    with torch.no_grad():
        embeds = model.merge_video_tokens(input_ids, model.get_video_features(pixel_values))
        out = []
        for _ in range(steps):
            logits = model.language_model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
            nxt = int(logits.argmax(-1))
            out.append(nxt)
            if nxt == model.config.text_config.eos_token_id:
                break
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    return out


@pytest.mark.parametrize("video_input,btadapter", [("all", True), ("residual", False), ("mean", False)])
def test_cached_greedy_generation_equals_no_cache_loop(video_input, btadapter):
    model = make_model(seed=3, video_input=video_input, btadapter=btadapter, residual_size=2).eval()
    ids = _prompt(model)
    px = torch.randn(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    got = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=12, do_sample=False, num_beams=1)
    want = _greedy_no_cache(model, ids, px, 12)
    assert got[0].tolist()[: len(want)] == want


def test_beam_search_sampling_and_repetition_penalty_run():
    model = make_model(seed=4).eval()
    ids, px = _prompt(model), torch.randn(1, 4, 3, 28, 28)
    beams = model.generate(
        input_ids=ids, pixel_values=px, max_new_tokens=8, num_beams=3, do_sample=False, repetition_penalty=1.5
    )
    torch.manual_seed(0)
    s1 = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    s2 = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.9)
    assert beams.shape[0] == 1 and torch.equal(s1, s2)


def test_repetition_penalty_sees_generated_tokens_only():
    """docs/faithfulness.md Q26: the prompt goes in as embeddings, so prompt ids are not penalised. A penalty of
    1e9 on a token that appears only in the prompt must not stop it from being generated."""
    model = make_model(seed=5).eval()
    px = torch.randn(1, 4, 3, 28, 28)
    plain = model.generate(input_ids=_prompt(model), pixel_values=px, max_new_tokens=1, do_sample=False)
    first = int(plain[0, 0])
    ids = _prompt(model, extra=(first, first))  # the token the model wants is in the prompt
    again = model.generate(input_ids=ids, pixel_values=px, max_new_tokens=1, do_sample=False)
    penalised = model.generate(
        input_ids=ids, pixel_values=px, max_new_tokens=1, do_sample=False, repetition_penalty=1e9
    )
    assert torch.equal(again, penalised)


def test_left_padded_batch_generates_like_single_prompts():
    model = make_model(seed=6).eval()
    c = model.config
    video = [c.video_token_id] * c.num_video_tokens(4)
    rows = [video + [2, 5, 6, 7, 8, 9], video + [2, 5]]
    px = torch.randn(2, 4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    singles = [
        model.generate(input_ids=torch.tensor([r]), pixel_values=px[i : i + 1], max_new_tokens=6, do_sample=False)[
            0
        ].tolist()
        for i, r in enumerate(rows)
    ]
    n = max(map(len, rows))
    pad = c.text_config.pad_token_id
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=px, max_new_tokens=6, do_sample=False)
    for i, single in enumerate(singles):
        assert batch[i].tolist()[: len(single)] == single


def test_stop_on_first_row_and_left_truncation():
    stop = StopOnFirstRow([[7], [8, 9]])
    assert stop(torch.tensor([[1, 7], [1, 2]]), None).all()
    assert stop(torch.tensor([[8, 9], [1, 2]]), None).all()
    assert not stop(torch.tensor([[1, 2], [8, 9]]), None).any()  # only the first row counts (docs/faithfulness.md Q30)
    model = make_model(seed=7).eval()
    ids, px = _prompt(model), torch.randn(1, 4, 3, 28, 28)
    n = ids.shape[1]
    with torch.no_grad():
        embeds = model.merge_video_tokens(ids, model.get_video_features(px))
    # docs/faithfulness.md Q7: begin = max(0, N + max_new - max_length); the model then sees embeds[:, begin:]
    cut = model.generate(
        input_ids=ids, pixel_values=px, max_new_tokens=3, do_sample=False, max_context_length=n + 3 - 5
    )
    ref = model.language_model.generate(
        inputs_embeds=embeds[:, 5:],
        attention_mask=torch.ones(1, n - 5, dtype=torch.long),
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=0,
    )
    assert cut.tolist() == ref.tolist()


def _settings(d):
    """A config dict without bookkeeping fields (load path, runtime dtype)."""
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in d.items() if k not in ("_name_or_path", "dtype")}


@pytest.mark.parametrize("overrides", [dict(btadapter=True), dict(video_input="residual", residual_size=2)])
def test_save_and_load_round_trip_bit_exact(tmp_path, overrides):
    model = make_model(seed=8, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # move off the init so zero-init layers are checked too
    model.save_pretrained(tmp_path)
    loaded = StllmForConditionalGeneration.from_pretrained(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _settings(loaded.config.to_dict()) == _settings(model.config.to_dict())
    model.eval()
    loaded.eval()
    batch = make_batch(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_bad_inputs_raise_clear_errors():
    model = make_model(seed=9, btadapter=True, btadapter_max_frames=8).eval()
    batch = make_batch(model)
    with pytest.raises(ValueError, match=r"pixel_values must be \(batch, frames, 3, 28, 28\)"):
        model(**{**batch, "pixel_values": torch.randn(2, 4, 3, 32, 32)})
    with pytest.raises(ValueError, match=r"pixel_values must be"):
        model(**{**batch, "pixel_values": torch.randn(8, 3, 28, 28)})
    with pytest.raises(ValueError, match="temporal position table has 8 rows"):
        model(**{**batch, "pixel_values": torch.randn(2, 9, 3, 28, 28)})
    no_video = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.video_token_id, 5)
    with pytest.raises(ValueError, match="exactly 16 video placeholder ids"):
        model(**{**batch, "input_ids": no_video})
    with pytest.raises(ValueError, match="exactly 16 video placeholder"):
        model(**{**batch, "input_ids": torch.cat([batch["input_ids"], batch["input_ids"][:, :3]], dim=1)})
    with pytest.raises(ValueError, match="batch size mismatch"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:1]})
    with pytest.raises(ValueError, match="video_input must be one of"):
        make_model(video_input="avg")
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(input_ids=batch["input_ids"])
