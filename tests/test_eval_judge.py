"""The judge client and phase 2 against a real OpenAI-compatible HTTP server on 127.0.0.1 (http.server thread)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stllm.config import load_config
from stllm.eval.config import EvalConfig, JudgeConfig, JudgePrompt
from stllm.eval.judge import JudgeClient, build_messages
from stllm.eval.predict import run
from stllm.eval.score import main as score_main
from tests.eval_layouts import CONFIGS, build_mcqa, build_open_qa, build_vcgbench, fake_answerer

KEY = "sk-test-SECRET-4242"
PROMPT = JudgePrompt(system=["judge"], user=["Q: {question}\nA: {answer}\nP: {pred}"], keys=["score"])


class FakeJudge(BaseHTTPRequestHandler):
    """Behaviour by a marker in the predicted answer: MODE=<kind>:<n failures first>."""

    attempts: dict[str, int] = {}
    requests: list[dict[str, Any]] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        with self.lock:
            FakeJudge.requests.append({"auth": self.headers.get("Authorization"), "body": body, "path": self.path})
            n = FakeJudge.attempts[user] = FakeJudge.attempts.get(user, 0) + 1
        m = re.search(r"MODE=(\w+):(\d+)", user)
        kind, fails = (m.group(1), int(m.group(2))) if m else ("ok", 0)
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, '{"error": "bad key"}')
        if n <= fails or kind == "always":
            if kind == "e500":
                return self._send(500, '{"error": "boom"}')
            if kind == "e429":
                return self._send(429, '{"error": "slow down"}', {"Retry-After": "0.05"})
            if kind == "slow":
                time.sleep(0.6)
            if kind == "badjson":
                return self._send(200, "this is not json")
            return self._send(200, json.dumps({"choices": [{"message": {"content": "I cannot rate this."}}]}))
        if kind == "e403":
            return self._send(403, '{"error": "forbidden"}')
        content = "{'pred': 'yes', 'score': 4}" if "'pred' and 'score'" in user else "{'score': 3}"
        if kind == "prose":
            content = "Here you go: " + content.replace("'", '"')
        return self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}))


@pytest.fixture()
def server() -> Iterator[str]:
    FakeJudge.attempts, FakeJudge.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _client(url: str, tmp_path: Path, **kw: Any) -> JudgeClient:
    cfg = JudgeConfig(
        base_url=url, model="judge-x", backoff=0.01, max_backoff=0.2, timeout=0.3, max_retries=2, concurrency=4, **kw
    )
    return JudgeClient(cfg, KEY, tmp_path / "cache")


def _msgs(pred: str) -> list[dict[str, str]]:
    return build_messages(PROMPT, {"question": "q", "answer": "a", "pred": pred})


def test_retries_failures_and_cache(server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = _client(server, tmp_path)
    cases = [
        "fine",
        "MODE=e500:2",
        "MODE=e429:1",
        "MODE=slow:1",
        "MODE=badjson:1",
        "MODE=noscore:1",
        "MODE=prose:0",
        "MODE=e500:5",
        "MODE=always:0",
        "MODE=e403:0",
    ]
    verdicts = client.judge_many([(_msgs(c), ["score"]) for c in cases])
    got = {c: (v.result, v.error is None, v.attempts) for c, v in zip(cases, verdicts)}
    assert got["fine"] == ({"score": 3}, True, 1)
    assert got["MODE=e500:2"] == ({"score": 3}, True, 3)  # two 500s, then an answer (max_retries=2)
    assert got["MODE=e429:1"][:2] == ({"score": 3}, True)  # honours Retry-After
    assert got["MODE=slow:1"][:2] == ({"score": 3}, True)  # a timeout is retried
    assert got["MODE=badjson:1"][:2] == ({"score": 3}, True)
    assert got["MODE=noscore:1"][:2] == ({"score": 3}, True)  # a reply without a score is retried
    assert verdicts[6].parse == "embedded_dict" and verdicts[6].result == {"score": 3}
    assert verdicts[7].error == "HTTP 500" and verdicts[7].attempts == 3  # bounded: counted as a failure
    assert verdicts[8].result is None and (verdicts[8].error or "").startswith("malformed")
    assert verdicts[9].error == "HTTP 403" and verdicts[9].attempts == 1  # not retried
    assert all(r["auth"] == f"Bearer {KEY}" and r["path"] == "/v1/chat/completions" for r in FakeJudge.requests)
    assert all("temperature" not in r["body"] and r["body"]["model"] == "judge-x" for r in FakeJudge.requests)
    calls = len(FakeJudge.requests)
    again = _client(server, tmp_path).judge_many([(_msgs(c), ["score"]) for c in cases])
    # only the 3 failed ones are asked again: e500:5 (2 more 500s, then an answer), always (3), e403 (1)
    assert len(FakeJudge.requests) - calls == 3 + 3 + 1
    assert again[7].result == {"score": 3} and again[8].error and again[9].error == "HTTP 403"
    assert all(v.cached for v, c in zip(again, cases) if got[c][1])
    cache_text = "".join(p.read_text() for p in (tmp_path / "cache").glob("*.json"))
    assert KEY not in cache_text and KEY not in caplog.text and "judge-x" in cache_text


def test_temperature_is_sent_and_keyed(server: str, tmp_path: Path) -> None:
    a = _client(server, tmp_path)
    b = _client(server, tmp_path, temperature=0.0)
    assert a.cache_key(_msgs("x")) != b.cache_key(_msgs("x"))
    b.judge(_msgs("x"), ["score"])
    assert FakeJudge.requests[-1]["body"]["temperature"] == 0.0
    assert b.identity == {"host": server.split("/")[2], "model": "judge-x", "temperature": 0.0}


def _phase1(cfg_name: str, root: Path, out: Path) -> Path:
    cfg = load_config(EvalConfig, CONFIGS / cfg_name, [f"data_root={root}", f"output_dir={out}"])
    run(cfg, "fake-model", fake_answerer)
    return out / "predictions.jsonl"


def test_score_open_qa_end_to_end(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STLLM_TEST_JUDGE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    pred = _phase1("anet_qa.yaml", build_open_qa(tmp_path / "anet", "anet"), tmp_path / "out")
    args = [
        str(pred),
        "--judge-base-url",
        server,
        "--judge-model",
        "judge-x",
        "judge.api_key_env=STLLM_TEST_JUDGE_KEY",
        "judge.backoff=0.01",
    ]
    assert score_main(args) == 0
    first = len(FakeJudge.requests)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert first == 2 and res["metrics"]["accuracy"] == 100.0 and res["metrics"]["score"] == 4.0
    assert res["judge"]["model"] == "judge-x" and res["judge"]["host"] == server.split("/")[2]
    assert res["judge"]["failures"] == 0 and res["model"] == "fake-model" and res["code_version"]["stllm"]
    assert (tmp_path / "out" / "results_anet_qa.png").stat().st_size > 0
    assert score_main(args) == 0
    assert len(FakeJudge.requests) == first  # the second scoring run makes zero calls
    assert json.loads((tmp_path / "out" / "results.json").read_text())["judge"]["cached"] == 2
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert KEY not in written and KEY not in caplog.text


def test_score_vcgbench_end_to_end(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    pred = _phase1("vcgbench.yaml", build_vcgbench(tmp_path / "vcg"), tmp_path / "out")
    assert score_main([str(pred), "--judge-base-url", server]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(FakeJudge.requests) == 2 * 3 + 1 + 1  # generic x3 aspects, temporal, consistency
    assert {k: a["judged"] for k, a in res["metrics"]["aspects"].items()} == {
        "correctness": 2,
        "detail": 2,
        "context": 2,
        "temporal": 1,
        "consistency": 1,
    }
    assert res["metrics"]["mean"] == 3.0 and res["judge"]["model"] == "gpt-3.5-turbo"
    consistency = [r for r in FakeJudge.requests if "Question 1:" in r["body"]["messages"][1]["content"]][0]
    user = consistency["body"]["messages"][1]["content"]
    assert "Question 1: Is it bright?\nQuestion 2: Is it bright?\n" in user  # docs/faithfulness.md Q9 kept by default
    assert score_main([str(pred), "--judge-base-url", server, "judge.consistency_judge_q1_twice=false"]) == 0
    assert "Question 2: Is the screen light?" in FakeJudge.requests[-1]["body"]["messages"][1]["content"]
    assert "| **mean** | 3.00 |" in (tmp_path / "out" / "results.md").read_text()


def test_score_mcqa_needs_no_judge(tmp_path: Path) -> None:
    pred = _phase1("mvbench.yaml", build_mcqa(tmp_path / "mv"), tmp_path / "out")
    assert score_main([str(pred.parent)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["judge"] is None and res["metrics"]["answered"] == 20
    assert res["metrics"]["total_acc"] == pytest.approx(res["metrics"]["macro_acc"])  # 1 item per task
    assert "Total Acc" in (tmp_path / "out" / "results.md").read_text()


class OddJudge(BaseHTTPRequestHandler):
    """Replies that broke the client (issue #16): the reply is chosen by a marker ODD=<kind> in the user message."""

    hits: dict[str, int] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        m = re.search(r"ODD=(\w+)", body["messages"][-1]["content"])
        kind = m.group(1) if m else "high"  # no marker (the QA judge prompts of `score`): always out of range
        OddJudge.hits[kind] = OddJudge.hits.get(kind, 0) + 1
        replies = {
            "high": json.dumps({"choices": [{"message": {"content": "{'score': 99}"}}]}).encode(),
            "negative": json.dumps({"choices": [{"message": {"content": "{'score': -7}"}}]}).encode(),
            "huge": json.dumps({"choices": [{"message": {"content": "{'score': 1e400}"}}]}).encode(),
            "infinity": b'{"choices": [{"message": {"content": "{\\"score\\": Infinity}"}}]}',
            "null": json.dumps({"choices": [{"message": {"content": None}}]}).encode(),
            "latin1": '{"choices": [{"message": {"content": "caf\u00e9"}}]}'.encode("latin-1"),
            "ok": json.dumps({"choices": [{"message": {"content": "{'score': 5}"}}]}).encode(),
        }
        try:
            if kind == "nan429":
                self.send_response(429)
                self.send_header("Retry-After", "nan")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
            if kind == "trickle":  # headers at once, then one byte every 0.25 s: each read is within the timeout
                data = json.dumps({"choices": [{"message": {"content": "{'score': 4}"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for b in data:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.25)
                return
            data = replies[kind]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client hung up (the deadline): nothing to do
            pass


@pytest.fixture()
def odd_server() -> Iterator[str]:
    OddJudge.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OddJudge)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


ODD = ["high", "negative", "huge", "infinity", "null", "latin1", "nan429"]


def test_malformed_replies_are_retried_then_failures(odd_server: str, tmp_path: Path) -> None:
    client = JudgeClient(
        JudgeConfig(base_url=odd_server, backoff=0.01, max_backoff=0.05, timeout=2.0, max_retries=2, concurrency=4),
        KEY,
        tmp_path / "cache",
    )
    start = time.monotonic()
    verdicts = client.judge_many([(_msgs(f"ODD={k}"), ["score"]) for k in ODD + ["ok"]])
    assert time.monotonic() - start < 10
    for kind, v in zip(ODD, verdicts):
        assert v.result is None and v.error and v.attempts == 3, (kind, v)  # max_retries=2: asked 3 times
        assert OddJudge.hits[kind] == 3, kind
    assert (verdicts[0].error or "").startswith("malformed") and "bad response body" in (verdicts[4].error or "")
    assert verdicts[-1].result == {"score": 5}
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 1  # only the valid verdict is cached
    # a cache entry edited to an out-of-range score is not trusted: asked again
    entry = json.loads(cached[0].read_text())
    entry["result"]["score"] = 99
    cached[0].write_text(json.dumps(entry))
    again = _client(odd_server, tmp_path).judge(_msgs("ODD=ok"), ["score"])
    assert again.result == {"score": 5} and not again.cached and OddJudge.hits["ok"] == 2


def test_total_deadline_per_call(odd_server: str, tmp_path: Path) -> None:
    # about 30 bytes at 0.25 s each: 7+ s per call without a total deadline; with timeout=0.6 each call ends early
    client = JudgeClient(
        JudgeConfig(base_url=odd_server, backoff=0.01, max_backoff=0.05, timeout=0.6, max_retries=2), KEY, tmp_path
    )
    start = time.monotonic()
    v = client.judge(_msgs("ODD=trickle"), ["score"])
    elapsed = time.monotonic() - start
    assert v.result is None and v.attempts == 3 and "TimeoutError" in (v.error or ""), v
    assert elapsed < 3 * 0.6 + 0.5 + 1.0, elapsed  # three calls + backoff, with slack for a loaded machine


def test_score_exits_1_when_every_judge_call_fails(odd_server: str, tmp_path: Path) -> None:
    from tests.faults import run_cli

    pred = _phase1("anet_qa.yaml", build_open_qa(tmp_path / "anet", "anet"), tmp_path / "out")
    run = run_cli("score", str(pred.parent), "--judge-base-url", odd_server, "judge.max_retries=0", "judge.timeout=2")
    assert run.rc == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("stllm score: nothing scored")]
    assert len(lines) == 1 and "all 2 judge calls" in lines[0] and "malformed" in lines[0], run.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["judge"]["failures"] == 2 and res["metrics"]["score"] is None
