"""Chat engine: prompts (docs/original.md §7.3, Q12), encode once, streaming, the evaluation decoding path, threads,
MiniGPT-4."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
import yaml

from stllm.data.video import MediaError
from stllm.demo.engine import (
    SYSTEM_INSTRUCTBLIP,
    SYSTEM_MINIGPT4,
    Chat,
    ChatEngine,
    ChatSettings,
    TokenStreamer,
    partial_answer,
)
from stllm.eval.config import PromptConfig
from stllm.eval.prompts import build_prompt
from stllm.generation import postprocess
from stllm.inference import generate_raw
from tests.helpers import VIDEOS, need

REPO = Path(__file__).resolve().parents[1]


def fast(**kw) -> ChatSettings:
    return ChatSettings(**{"num_frames": 4, "num_beams": 1, "max_new_tokens": 12, **kw})


def test_system_texts_match_the_eval_protocol_yaml():
    cfg = yaml.safe_load((REPO / "configs/eval/vcgbench.yaml").read_text())["prompt"]
    assert cfg["system"] == SYSTEM_INSTRUCTBLIP
    assert cfg["minigpt4_system"] == SYSTEM_MINIGPT4


def test_prompts_first_turn_equals_evaluation_then_history(engine, video):
    chat = Chat(engine, fast())
    chat.load_video(video)
    eval_cfg = PromptConfig(style="chat", system=SYSTEM_INSTRUCTBLIP, use_system=True)
    assert chat.build_prompt("what is it?") == build_prompt("what is it?", eval_cfg)
    chat.history = [("q1", "a1"), ("q2", "a2")]
    assert chat.build_prompt("q3") == (
        f"<ImageHere>{SYSTEM_INSTRUCTBLIP}###Human: q1 ###Assistant: a1"
        "###Human: q2 ###Assistant: a2###Human: q3 ###Assistant: "
    )
    chat.settings.single_turn = True  # the original get_context_emb_sim: current question only
    assert chat.build_prompt("q3") == build_prompt("q3", eval_cfg)
    chat.settings.single_turn, chat.settings.double_wrap = True, True  # docs/faithfulness.md Q12 reproduced on request
    assert chat.build_prompt("q") == (
        f"<ImageHere>{SYSTEM_INSTRUCTBLIP}###Human: ###Human: q ###Assistant:  ###Assistant: "
    )
    nosys = Chat(engine, fast(use_system=False))
    assert nosys.build_prompt("q") == "<ImageHere>###Human: q ###Assistant: "


def test_video_encoded_once_per_upload_and_answers_are_the_eval_path(engine, video):
    chat = Chat(engine, fast())
    chat.load_video(video)
    before = engine.encode_count
    assert chat.encode_count == 0  # encoded lazily with the first question as Q-Former text (docs/faithfulness.md Q28)
    first = chat.ask("what is happening in the video?")
    second = chat.ask("and then?")
    assert chat.encode_count == 1 and engine.encode_count == before + 1
    assert [q for q, _ in chat.history] == ["what is happening in the video?", "and then?"]
    # the first answer is exactly what evaluation's decoding path returns for this prompt and Q-Former text
    gen = chat.settings.generation()
    raw = generate_raw(
        engine.model,
        engine.processor,
        chat.pixel_values[None],
        [chat.build_prompt("what is happening in the video?", history=[])],
        ["what is happening in the video?"],
        gen,
    )
    want = [postprocess(t) for t in raw]
    assert first == want[0]
    assert isinstance(second, str)
    chat.reset()
    assert chat.history == [] and chat.video_embeds is not None
    chat.ask("again?")
    assert chat.encode_count == 1
    chat.load_video(video)  # a new upload encodes again
    chat.ask("new video?")
    assert chat.encode_count == 2


def test_reencode_per_question_and_fixed_qformer_text(engine, video):
    chat = Chat(engine, fast(reencode_per_question=True))
    chat.load_video(video)
    chat.ask("one?")
    chat.ask("two?")
    assert chat.encode_count == 2
    fixed = Chat(engine, fast(qformer_text="Watch the video."))
    fixed.load_video(video)
    assert fixed.encode_count == 1  # encoded at upload
    fixed.ask("one?")
    fixed.ask("two?")
    assert fixed.encode_count == 1


def test_streaming_is_cumulative_and_ends_with_the_answer(engine, video):
    chat = Chat(engine, fast(max_new_tokens=16))
    chat.load_video(video)
    parts = list(chat.stream("describe the video"))
    assert len(parts) >= 2
    for a, b in zip(parts[:-2], parts[1:-1]):
        assert b.startswith(a)
    plain = Chat(engine, fast(max_new_tokens=16))
    plain.load_video(video)
    gen = plain.settings.generation()
    plain._encode("describe the video")
    assert parts[-1] == engine.generate(plain.build_prompt("describe the video"), plain.video_embeds, 4, gen)
    beams = Chat(engine, fast(num_beams=2, max_new_tokens=8))  # beam search cannot stream: one answer at once
    beams.load_video(video)
    assert len(list(beams.stream("describe"))) == 1


def test_partial_answer_and_streamer():
    assert partial_answer(" The man ##") == "The man "
    assert partial_answer(" The man ### Human: x") == "The man "
    assert partial_answer("Assistant: hi") == "hi"
    assert partial_answer("caf\ufffd") == "caf"

    class Proc:
        def decode(self, ids):
            return "".join(chr(96 + i) for i in ids)

    s = TokenStreamer(Proc())
    s.put(torch.zeros(1, 0, dtype=torch.long))  # the prompt: skipped
    for i in (1, 3, 4, 5):  # a leading <s> (id 1) is dropped, as docs/original.md §7.0's post-processing does
        s.put(torch.tensor([i]))
    s.end()
    s.close()
    assert list(s) == ["c", "cd", "cde"]


def test_context_budget_drops_the_oldest_turns(engine, video):
    chat = Chat(engine, fast())
    chat.load_video(video)
    chat.history = [(f"question {i}", "answer " * 20) for i in range(6)]
    s, t = chat.settings, 4
    full = engine.prompt_length(chat.build_prompt("q"), t)
    s.max_length = full + s.max_new_tokens - 1
    kept = chat._fit_prompt("q")
    assert "question 0" not in kept and "question 5" in kept
    assert engine.prompt_length(kept, t) + s.max_new_tokens <= s.max_length


def test_two_sessions_in_two_threads_keep_separate_histories(engine, video):
    chats = [Chat(engine, fast()), Chat(engine, fast())]
    for c in chats:
        c.load_video(video)
    questions = [["what moves?", "where to?"], ["what colour?", "how many?"]]
    errors: list[BaseException] = []

    def talk(chat: Chat, qs: list[str]) -> None:
        try:
            for q in qs:
                chat.ask(q)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=talk, args=(c, q)) for c, q in zip(chats, questions)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors
    for chat, qs in zip(chats, questions):
        assert [q for q, _ in chat.history] == qs
    solo = Chat(engine, fast())  # concurrency changed nothing: same answers as alone
    solo.load_video(video)
    assert solo.ask("what moves?") == chats[0].history[0][1]


def test_bad_video_raises_media_error_and_deepcopy_shares_the_model(engine, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    chat = Chat(engine, fast())
    with pytest.raises(MediaError, match="bad.mp4"):
        chat.load_video(bad)
    with pytest.raises(RuntimeError, match="no video"):
        chat.ask("hi")
    twin = copy.deepcopy(chat)
    assert twin.engine is engine and twin.history is not chat.history


def test_shared_real_video(engine):
    path = need(VIDEOS) / "cooking.mp4"
    chat = Chat(engine, fast(num_frames=8))
    chat.load_video(path)
    assert chat.pixel_values.shape[0] == 8
    assert isinstance(chat.ask("what is the person cooking?"), str)


def test_minigpt4_base_template(tmp_path, video):
    from stllm.testing import build_tiny_model_dir

    eng = ChatEngine.from_pretrained(build_tiny_model_dir(tmp_path / "m4", qformer_text_input=False))
    chat = Chat(eng, fast())
    chat.load_video(video)
    assert chat.encode_count == 1  # no Q-Former text: encoded at upload
    chat.history = [("q1", "a1")]
    assert chat.build_prompt("q2") == (
        f"{SYSTEM_MINIGPT4}###Human: <Video><ImageHere></Video> q1###Assistant: a1###Human: q2###Assistant: "
    )
    chat.reset()
    chat.ask("what is it?")
    chat.ask("and?")
    assert chat.encode_count == 1 and len(chat.history) == 2
