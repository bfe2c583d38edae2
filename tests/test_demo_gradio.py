"""demo_gradio.py through gradio_client on 127.0.0.1: upload, streamed turns, reset, bad uploads, two users."""

from __future__ import annotations

import os
import socket
import threading

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from stllm.demo import web as demo_gradio  # noqa: E402
from stllm.demo.engine import ChatSettings  # noqa: E402
from tests.helpers import VIDEOS, need  # noqa: E402

FRAMES, BEAMS, TEMP, SAMPLE, MAX_NEW = 4, 1, 1.0, False, 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(engine):
    defaults = ChatSettings(num_frames=FRAMES, num_beams=BEAMS, max_new_tokens=MAX_NEW)
    app = demo_gradio.build_app(engine, [], defaults, max_upload_mb=50)
    app.queue().launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        ssr_mode=False,
    )
    yield app
    app.close()


def client(app):
    return gradio_client.Client(app.local_url, verbose=False)


def ask(c, question: str, history: list) -> tuple[list, list]:
    """Submit /ask and collect every streamed update -> (final outputs, all updates)."""
    job = c.submit(question, history, FRAMES, BEAMS, TEMP, SAMPLE, MAX_NEW, api_name="/ask")
    updates = list(job)
    return job.result(), updates


def texts(messages: list) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((m["role"], content))
    return out


def test_api_names_and_safe_launch_defaults(server, monkeypatch, tiny_model_dir):
    api = client(server).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/upload", "/ask", "/reset"} <= set(api)
    seen = {}
    real_launch = gr.Blocks.launch

    def spy(self, **kw):  # the real launch with main's arguments, but returning at once and on a free port
        seen.update(kw)
        real_launch(self, **{**kw, "prevent_thread_lock": True, "server_port": free_port()})
        seen["url"] = self.local_url
        self.close()

    monkeypatch.setattr(gr.Blocks, "launch", spy)
    assert demo_gradio.main(["--model", str(tiny_model_dir), "--device", "cpu", "--max-upload-mb", "1.5"]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False
    assert seen["max_file_size"] == int(1.5 * 2**20) and seen["url"].startswith("http://127.0.0.1:")
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_upload_two_streamed_turns_reset_encode_once(server, engine, video):
    c = client(server)
    before = engine.encode_count
    chat, status = c.predict(gradio_client.handle_file(video), FRAMES, api_name="/upload")
    assert chat == [] and "Video ready (4 frames)" in status
    (history, box, status), updates = ask(c, "what is happening?", [])
    assert box == "" and "Turn 1" in status
    assert len(updates) >= 2  # streamed: several partial answers before the final one
    (history, box, status), _ = ask(c, "and then?", history)
    turns = texts(history)
    assert [r for r, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0][1] == "what is happening?" and turns[2][1] == "and then?" and "Turn 2" in status
    assert engine.encode_count == before + 1  # one upload, one encode, two answers
    chat, status = c.predict(api_name="/reset")
    assert chat == [] and "cleared" in status
    (history, _, status), _ = ask(c, "fresh start?", [])
    assert len(history) == 2 and "Turn 1" in status
    assert engine.encode_count == before + 1


def test_bad_uploads_give_a_clear_message(server, engine, tmp_path, video):
    c = client(server)
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is a text file, not a video")
    chat, status = c.predict(gradio_client.handle_file(str(bad)), FRAMES, api_name="/upload")
    assert chat == [] and "Could not read **holiday.mp4** as a video" in status
    assert "Traceback" not in status and "/tmp/gradio" not in status
    (history, box, status), _ = ask(c, "anything?", [])  # no session video: asked to upload, question kept
    assert history == [] and box == "anything?" and "Upload a video" in status
    h = demo_gradio.make_handlers(engine, ChatSettings(num_frames=FRAMES), max_upload_mb=0.001)
    state, _, status = h["upload"](video, FRAMES, None)
    assert state is None and "accepts videos up to 0.001 MB" in status


def test_two_users_at_once_keep_separate_conversations(server, video):
    users = {"alice": ["what moves?", "where?"], "bob": ["what colour?", "how many?", "why?"]}
    results, errors = {}, []

    def talk(name: str) -> None:
        try:
            c = client(server)
            c.predict(gradio_client.handle_file(video), FRAMES, api_name="/upload")
            history = []
            for q in users[name]:
                (history, _, _), _ = ask(c, q, history)
            results[name] = texts(history)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=talk, args=(n,)) for n in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    for name, qs in users.items():
        assert [text for role, text in results[name] if role == "user"] == qs


def test_shared_video_and_example_list(engine):
    path = need(VIDEOS) / "TVshow.mp4"
    app = demo_gradio.build_app(engine, [str(path)], ChatSettings(num_frames=FRAMES, num_beams=1, max_new_tokens=8))
    assert isinstance(app, gr.Blocks)
    h = demo_gradio.make_handlers(engine, ChatSettings(num_frames=FRAMES, num_beams=1, max_new_tokens=8), 50)
    state, _, status = h["upload"](str(path), FRAMES, None)
    assert "Video ready" in status
    *_, (history, _, status) = h["ask"]("who is talking?", [], state, FRAMES, 2, 1.0, False, 8)
    assert len(history) == 2 and "Turn 1" in status  # beams > 1: the whole answer at once
