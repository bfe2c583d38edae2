"""(judge prompt, values) -> parsed judge verdict {'score': int[, 'pred': 'yes'|'no']} via any OpenAI-compatible
chat-completions endpoint, with a disk cache, bounded retries and counted failures (docs/design.md decision 8,
docs/original.md §7.3/7.4, Q33).

The API key is read from the environment variable named in JudgeConfig.api_key_env and used only in the
Authorization header: it is never logged, never part of a cache key, never written to disk.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import logging
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from stllm.eval.config import JudgeConfig, JudgePrompt

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{(question|answer|pred|question1|question2|pred1|pred2)\}")
# a number that is not the start of a longer one ("1e400" must not read as 1)
_SCORE = re.compile(r"""['"]score['"]\s*:\s*['"]?(-?\d+(?:\.\d+)?)(?![\d.eE])""")
SCORE_RANGE = (0, 5)  # docs/original.md §7.3/7.4: the judge is asked for an integer 0-5
_PRED = re.compile(r"""['"]pred['"]\s*:\s*['"]([A-Za-z]+)['"]""")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def build_messages(prompt: JudgePrompt, values: dict[str, str]) -> list[dict[str, str]]:
    """Fill the placeholders in one pass (an answer that contains "{pred}" stays literal)."""

    def fill(pieces: Sequence[str]) -> str:
        return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), "")), "".join(pieces))

    return [{"role": "system", "content": fill(prompt.system)}, {"role": "user", "content": fill(prompt.user)}]


def parse_reply(text: str, keys: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
    """Judge reply -> ({key: value}, how) or (None, why). Like the original, ast.literal_eval of the dict string
    first; then the first {...} in the text as a Python/JSON dict; then a regex for 'score': N / 'pred': 'yes'."""
    candidates = [(text.strip(), "literal_eval")]
    m = re.search(r"\{.*?\}", text, flags=re.S)
    if m:
        candidates.append((m.group(0), "embedded_dict"))
    for snippet, how in candidates:
        for loader in (ast.literal_eval, json.loads):
            try:
                obj = loader(snippet)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict) and all(k in obj for k in keys):
                try:
                    return _normalise(obj, keys), how
                except (TypeError, ValueError, OverflowError):
                    continue
    found: dict[str, Any] = {}
    if (s := _SCORE.search(text)) is not None:
        found["score"] = s.group(1)
    if (p := _PRED.search(text)) is not None:
        found["pred"] = p.group(1)
    if all(k in found for k in keys):
        try:
            return _normalise(found, keys), "regex"
        except (TypeError, ValueError, OverflowError):
            pass
    missing = [k for k in keys if k not in found]
    return None, f"malformed reply (no {', '.join(missing) or 'usable value'})"


def valid_result(obj: Any, keys: Sequence[str]) -> dict[str, Any] | None:
    """A stored verdict (cache entry) -> the same verdict if it still passes the rules of a fresh reply, else None."""
    if not isinstance(obj, dict) or not all(k in obj for k in keys):
        return None
    try:
        return _normalise(obj, keys)
    except (TypeError, ValueError, OverflowError):
        return None


def _normalise(obj: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        v = obj[k]
        if k == "score":  # the original: int(score); "4.8" (a string) would have crashed it, we floor it too
            if isinstance(v, bool):
                raise ValueError("boolean score")
            x = float(v) if isinstance(v, (int, float)) else float(str(v).strip())
            # out of range (99, -7), nan or inf (1e400, JSON Infinity): a malformed reply, never averaged
            if not (math.isfinite(x) and SCORE_RANGE[0] <= x <= SCORE_RANGE[1]):
                raise ValueError(f"score {v!r} outside {SCORE_RANGE[0]}-{SCORE_RANGE[1]}")
            out[k] = int(x)
        elif k == "pred":
            if not isinstance(v, str):
                raise TypeError("pred must be a string")
            out[k] = v
        else:
            out[k] = v
    return out


@dataclass
class Verdict:
    """One judged request: parsed result or the reason it failed (after retries), and whether it hit the cache."""

    result: dict[str, Any] | None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    parse: str = ""


class _Deadline:
    """A total time limit for one HTTP call. The socket timeout bounds each read only, so a server that trickles a
    byte at a time could stretch a call without end; at the deadline every socket of the call is shut down, which
    wakes the blocked read, and the call then reports a timeout."""

    def __init__(self, seconds: float):
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def connection_class(self, base: type) -> type:
        """http.client connection class whose sockets this deadline can shut down."""
        deadline = self

        class Watched(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                with deadline._lock:
                    deadline._socks.append(self.sock)
                    if deadline.expired:
                        deadline._shut(self.sock)

        return Watched

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:  # the plain socket's shutdown (an SSL socket's own would drop its state under the reading thread)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class _WatchedHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self.deadline.connection_class(http_class), req, **kwargs)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self.deadline.connection_class(http_class), req, **kwargs)


class MalformedReply(ValueError):
    """A 200 reply whose body is not a chat completion with a text message."""


class JudgeClient:
    """POST {base_url}/chat/completions; thread-safe; cache in cache_dir (one JSON file per sha256 key)."""

    def __init__(self, cfg: JudgeConfig, api_key: str | None, cache_dir: Path):
        self.cfg = cfg
        self._key = api_key
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def identity(self) -> dict[str, Any]:
        """What results.json records about the judge (host + model + temperature; never the key)."""
        return {
            "host": urlparse(self.cfg.base_url).netloc,
            "model": self.cfg.model,
            "temperature": self.cfg.temperature,
        }

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        blob = json.dumps(
            {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _post(self, messages: list[dict[str, str]]) -> str:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages}
        if self.cfg.temperature is not None:  # None: no field, the API default, as the original
            body["temperature"] = self.cfg.temperature
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode("utf-8"), method="POST", headers={"Content-Type": "application/json"}
        )
        if self._key:
            req.add_unredirected_header("Authorization", f"Bearer {self._key}")
        with self._lock:
            self.calls += 1
        with _Deadline(self.cfg.timeout) as deadline:
            opener = urllib.request.build_opener(_WatchedHTTP(deadline), _WatchedHTTPS(deadline))
            try:
                with opener.open(req, timeout=self.cfg.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError:
                raise
            except (OSError, http.client.HTTPException) as err:
                if deadline.expired:
                    raise TimeoutError(f"no complete reply within {self.cfg.timeout:g} s") from err
                raise
            if deadline.expired:
                raise TimeoutError(f"no complete reply within {self.cfg.timeout:g} s")
        # UnicodeDecodeError, ValueError (JSON NaN/Infinity are fine here; the score check rejects them)
        payload = json.loads(raw.decode("utf-8"))
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise MalformedReply(f"no choices[0].message.content ({type(err).__name__})") from err
        if not isinstance(content, str):
            raise MalformedReply(f"message content is {type(content).__name__}, not text")
        return content

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        delay = self.cfg.backoff * (2**attempt)
        if retry_after:
            try:
                wanted = float(retry_after)
            except ValueError:
                wanted = math.nan  # an HTTP date: fall back to the exponential backoff
            if math.isfinite(wanted):  # "nan" / "inf" parse as floats but are no waiting time
                delay = wanted
        time.sleep(min(max(delay, 0.0), self.cfg.max_backoff))

    def judge(self, messages: list[dict[str, str]], keys: Sequence[str]) -> Verdict:
        """One verdict: the cache, else up to 1 + max_retries attempts (HTTP 408/429/5xx, timeouts, connection
        errors and malformed replies are retried; other HTTP errors fail at once)."""
        key = self.cache_key(messages)
        path = self.cache_dir / f"{key}.json"
        if path.is_file():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                result = valid_result(entry["result"], keys) if isinstance(entry, dict) else None
            except (ValueError, KeyError, OSError):  # ValueError: bad JSON or not UTF-8
                result = None
            if result is not None:
                return Verdict(result, cached=True, parse=entry.get("parse", ""))
            # an entry written by an older version or edited by hand (a score of 99): never trusted
            logger.warning("invalid judge cache entry %s: asking again", path.name)
        error = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                reply = self._post(messages)
            except urllib.error.HTTPError as err:
                error = f"HTTP {err.code}"
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if err.code not in RETRY_STATUS:
                    return Verdict(None, error=error, attempts=attempt + 1)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # timeouts, resets, deadline
                error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except (ValueError, OverflowError) as err:  # not UTF-8, not JSON, no text content (MalformedReply)
                error = f"bad response body ({type(err).__name__}: {str(err)[:80]})"
            else:
                result, how = parse_reply(reply, keys)
                if result is not None:
                    entry = {
                        "model": self.cfg.model,
                        "temperature": self.cfg.temperature,
                        "messages": messages,
                        "reply": reply,
                        "result": result,
                        "parse": how,
                    }
                    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
                    tmp.write_text(json.dumps(entry, ensure_ascii=False))
                    tmp.replace(path)
                    return Verdict(result, attempts=attempt + 1, parse=how)
                error = how
            if attempt < self.cfg.max_retries:
                logger.debug("judge attempt %d failed (%s); retrying", attempt + 1, error)
                self._wait(attempt, retry_after)
        return Verdict(None, error=error, attempts=self.cfg.max_retries + 1)

    def judge_many(
        self, requests: Sequence[tuple[list[dict[str, str]], Sequence[str]]], desc: str = "judge"
    ) -> list[Verdict]:
        """Judge requests concurrently (cfg.concurrency threads); order of the results = order of the requests."""
        out: list[Verdict | None] = [None] * len(requests)
        with (
            ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool,
            tqdm(total=len(requests), desc=desc) as bar,
        ):
            futures = {pool.submit(self.judge, m, k): i for i, (m, k) in enumerate(requests)}
            for fut in futures:
                out[futures[fut]] = fut.result()
                bar.update(1)
        failed = sum(v.error is not None for v in out if v)
        if failed:
            logger.warning(
                "%s: the judge failed on %d of %d requests (excluded from the means)", desc, failed, len(requests)
            )
        return [v for v in out if v is not None]
