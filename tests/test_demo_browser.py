"""demo_gradio.py in a real headless Chromium (DevTools protocol): upload a video, ask, the answer appears.

The screenshot is saved as test-artifacts/demo_gradio_browser.png. Skipped where Chromium is absent
(`apt-get install -y --no-install-recommends chromium`). The DevTools client is a minimal RFC 6455 websocket
client on the standard library (no websocket package is installed in the venv).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from stllm.demo import web as demo_gradio  # noqa: E402
from stllm.demo.engine import Chat, ChatEngine, ChatSettings  # noqa: E402
from tests.data_media import write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
    "--remote-debugging-port=0",
]
SETTINGS = dict(num_frames=4, num_beams=1, max_new_tokens=12)
QUESTION = "what is happening in the video?"


class DevTools:
    """Chrome DevTools protocol over one websocket: call(method, **params) -> result (events are skipped)."""

    def __init__(self, ws_url: str, timeout: float = 60.0) -> None:
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._chunk()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")
        self.last_id = 0

    def _chunk(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("DevTools connection closed")
        return data

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._chunk()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self) -> str:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            if b1 & 0x80:
                self._exact(4)  # servers do not mask; skip a key if one is sent
            payload, opcode = self._exact(n), b0 & 0x0F
            if opcode == 8:
                raise ConnectionError("DevTools closed the websocket")
            if opcode in (9, 10):
                continue
            data += payload
            if b0 & 0x80:
                return data.decode()

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        payload = json.dumps({"id": self.last_id, "method": method, "params": params}).encode()
        n, mask = len(payload), os.urandom(4)
        head = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = json.loads(self._message())
            if msg.get("id") == self.last_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; page text: {self.js('document.body.innerText')!r}")


def _page_websocket(user_dir: Path, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    port_file = user_dir / "DevToolsActivePort"
    end = time.monotonic() + timeout
    while time.monotonic() < end and not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    while time.monotonic() < end:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.2)
    raise RuntimeError("no page target in chromium")


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]{2,}", text)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed "
    "(apt-get install -y --no-install-recommends chromium); the real-browser test needs it",
)
def test_browser_upload_ask_answer_appears(tiny_model_dir, tmp_path):
    engine = ChatEngine.from_pretrained(tiny_model_dir)
    video = write_video(tmp_path / "drawn.mp4", n=30)
    expected = Chat(engine, ChatSettings(**SETTINGS))
    expected.load_video(video)
    answer = expected.ask(QUESTION)  # greedy: the page must show this same answer

    app = demo_gradio.build_app(engine, [], ChatSettings(**SETTINGS))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    user_dir = tmp_path / "chromium-profile"
    user_dir.mkdir()
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}", app.local_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cdp = DevTools(_page_websocket(user_dir, proc))
        cdp.wait_for(
            "!!document.querySelector('#upload-btn') && !!document.querySelector('#video input[type=file]')",
            "the page to render",
        )
        root = cdp.call("DOM.getDocument")["root"]["nodeId"]
        node = cdp.call("DOM.querySelector", nodeId=root, selector="#video input[type=file]")["nodeId"]
        cdp.call("DOM.setFileInputFiles", nodeId=node, files=[str(video)])
        cdp.wait_for("!!document.querySelector('#video video')", "the uploaded video to show")
        cdp.js("document.querySelector('#upload-btn').click()")
        cdp.wait_for("document.querySelector('#status').innerText.includes('Video ready')", "the video to load")
        cdp.js(
            "const t = document.querySelector('#question textarea'); "
            f"t.value = {json.dumps(QUESTION)}; t.dispatchEvent(new Event('input', {{bubbles: true}}))"
        )
        cdp.js("document.querySelector('#ask-btn').click()")
        cdp.wait_for("document.querySelector('#status').innerText.includes('Turn 1 answered')", "the answer")
        time.sleep(0.5)  # let the last chatbot update paint
        shown = cdp.js("document.querySelector('#chatbot').innerText")
        ARTIFACTS.mkdir(exist_ok=True)
        png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        (ARTIFACTS / "demo_gradio_browser.png").write_bytes(png)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        app.close()
    assert QUESTION in shown
    words = _words(answer)
    assert words, f"the tiny model's answer {answer!r} has no visible word to look for"
    missing = [w for w in words if w not in shown]
    assert not missing, f"answer words {missing} not in the page's chat: {shown!r}"
