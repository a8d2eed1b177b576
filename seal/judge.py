"""An LLM judge that grades no-passage QA answers yes/no over an OpenAI-compatible API.

Source: the paper (Zweiger et al. 2025, Section 4.2) grades the knowledge-incorporation
answers with GPT-4.1 asked whether a prediction matches the gold answer, yes or no. The
reference implementation counts a question the grader failed on as wrong; here such a
question is *ungraded* (``None``), and the recipe's ``qa.ungraded`` switch ('skip' or
'wrong', applied by the caller) decides what it counts as. ``qa.ungraded='wrong'``
restores the reference behaviour.

The API key is read from the environment variable named by ``JudgeConfig.api_key_env``
each time it is needed. It is never stored on the judge, logged, put in an exception
message, or written anywhere.

HTTP goes through ``httpx2`` (Pydantic's maintained continuation of HTTPX, already
installed with ``huggingface_hub``), or ``httpx`` where ``httpx2`` is absent; both have
the same API.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import urlsplit

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - Python 3.10, or an environment with plain httpx
    import httpx

from seal.config import JudgeConfig

log = logging.getLogger(__name__)

__all__ = ["JUDGE_SYSTEM_PROMPT", "JUDGE_USER_TEMPLATE", "JudgeError", "LLMJudge", "parse_verdict"]

JUDGE_SYSTEM_PROMPT = (
    "You grade short answers to factual questions. You reply with one word: yes or no."
)

# The fields are delimited by tags so that a prediction cannot pose as instructions.
JUDGE_USER_TEMPLATE = """\
Decide whether the prediction correctly answers the question, judged against the gold answer.

<question>{question}</question>
<gold>{gold}</gold>
<prediction>{prediction}</prediction>

The prediction is correct if it gives the same answer as the gold answer, even in other \
words or with extra detail that does not contradict it. It is incorrect if it gives a \
different answer, contradicts the gold answer, hedges between several answers, or does \
not answer.

Reply "yes" if the prediction is correct and "no" otherwise."""

MAX_TOKENS = 8
"""Completion budget of one verdict (``max_tokens`` of the request)."""

RETRY_AFTER_CAP_S = 60.0
"""Longest wait, in seconds, honoured from a ``Retry-After`` header."""

MAX_BACKOFF_S = 60.0
"""Longest single exponential-backoff wait, in seconds."""

MAX_REPLY_BYTES = 1 << 20
"""A reply body longer than this is treated as a bad reply (and retried)."""

_LOCAL_HOSTNAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class JudgeError(RuntimeError):
    """The judge cannot run at all: an API key is missing or unusable, or base_url is invalid.

    Messages name the environment variable, never its value.
    """


class _Retryable(Exception):
    """One attempt failed in a way worth retrying; ``delay_s`` is a server-requested wait."""

    def __init__(self, reason: str, delay_s: float | None = None):
        super().__init__(reason)
        self.delay_s = delay_s


class _Fatal(Exception):
    """One attempt failed in a way retrying cannot fix (a 4xx other than 429);
    ``stop_all``: no other item can succeed either (the key was refused)."""

    def __init__(self, reason: str, stop_all: bool = False):
        super().__init__(reason)
        self.stop_all = stop_all


def parse_verdict(text: object) -> float | None:
    """1.0 for a reply whose first word is "yes", 0.0 for "no" (any case), else None.

    Leading punctuation and markdown are skipped (``"**Yes.**"`` is yes); a first word that
    merely starts with yes/no (``"Nope"``, ``"Yesterday"``) is not a verdict.
    """
    if not isinstance(text, str):
        return None
    m = re.match(r"[\W_]*([A-Za-z]+)", text)
    if m is None:
        return None
    word = m.group(1).lower()
    return 1.0 if word == "yes" else 0.0 if word == "no" else None


def _is_local(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host in _LOCAL_HOSTNAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after_s(headers) -> float | None:
    """Seconds asked for by ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``, capped."""
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
    raw = headers.get("retry-after")
    if value is None and raw:
        try:
            value = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                value = (when - datetime.now(timezone.utc)).total_seconds()
            except (TypeError, ValueError, IndexError, OverflowError):
                value = None
    if value is None or value != value:  # missing or NaN
        return None
    return max(0.0, min(value, RETRY_AFTER_CAP_S))


def _error_code(body: bytes) -> str:
    """The ``error.code``/``error.type`` of an OpenAI-style error body (never its message,
    which for 401s can echo part of the key)."""
    try:
        err = json.loads(body).get("error") or {}
        parts = [str(err[k]) for k in ("type", "code") if isinstance(err, dict) and err.get(k)]
        return "/".join(parts)[:80]
    except Exception:
        return ""


class LLMJudge:
    """Grade (question, gold, prediction) triples yes/no with a chat-completions model.

    Source: paper Section 4.2 (GPT-4.1 as a yes/no judge). Requests are
    ``POST {base_url}/chat/completions`` at temperature 0 with ``max_tokens=MAX_TOKENS``,
    at most ``cfg.max_concurrency`` in flight.

    Each request has ``cfg.timeout_s`` seconds (as the connect, read and write timeouts,
    and as a limit on the whole exchange). Connection errors, timeouts, HTTP 429 and 5xx
    are retried up to ``cfg.max_retries`` times, waiting ``cfg.backoff_s`` seconds and
    doubling (at most ``MAX_BACKOFF_S``), or what a ``Retry-After`` header asks (at most
    ``RETRY_AFTER_CAP_S``). Malformed replies and replies whose first word is neither yes
    nor no are retried at once from the same budget. Other 4xx are not retried; after a
    401 or 403 the rest of the call is not sent (the key is wrong). An item that cannot be
    graded is ``None`` (ungraded).

    Graded results are cached on the object by the exact triple, so identical items cost
    one request; ungraded ones are asked again by a later call.

    The key comes from the environment variable ``cfg.api_key_env`` when the judge is
    built (to fail early) and again on every ``grade`` call, and is sent as
    ``Authorization: Bearer <key>``. A loopback ``base_url`` (localhost, 127.0.0.0/8, ::1)
    may run without a key and never goes through a proxy.

    Raises:
        JudgeError: base_url is not an http(s) URL; or the key is missing for a non-local
            base_url, or holds characters not allowed in an HTTP header.
    """

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        parts = urlsplit(cfg.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JudgeError(f"judge base_url must be an http(s) URL, got {cfg.base_url!r}")
        self._local = _is_local(parts.hostname)
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._cache: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0}
        self._check_key()

    def __repr__(self) -> str:
        return (
            f"LLMJudge(base_url={self.cfg.base_url!r}, model={self.cfg.model!r}, "
            f"api_key_env={self.cfg.api_key_env!r})"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters since construction (a copy): ``requests`` (HTTP requests sent, retries
        included), ``retries`` (attempts after the first), ``failures`` (distinct items
        left ungraded, once per ``grade`` call), ``cache_hits`` (items answered from the
        cache or by a duplicate in the same call)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _check_key(self) -> str | None:
        """The key from the environment (None: none set, allowed for local URLs).

        Raises:
            JudgeError: no key for a non-local URL, or one unusable in a header.
        """
        name = self.cfg.api_key_env
        key = (os.environ.get(name) or "").strip()
        if not key:
            if self._local:
                return None
            raise JudgeError(
                f"the LLM judge at {self.cfg.base_url} needs an API key in the environment "
                f"variable {name}, which is not set (for a server without authentication, "
                f"set it to any value)"
            )
        if not all(33 <= ord(c) < 127 for c in key):
            raise JudgeError(
                f"the environment variable {name} holds characters not allowed in an HTTP "
                f"header (only printable ASCII without spaces)"
            )
        return key

    def grade(self, items: list[tuple[str, str, str]]) -> list[float | None]:
        """Grade (question, gold, prediction) triples: 1.0 yes, 0.0 no, None ungraded.

        Results are in the order of ``items``. Blocks until every item is graded or has
        used its retries; the worst case per item is about
        ``(max_retries + 1) * timeout_s`` plus the backoff waits.

        Raises:
            JudgeError: as for the constructor (the key is read again here).
        """
        items = [(str(q), str(g), str(p)) for q, g, p in items]
        results: dict[tuple[str, str, str], float | None] = {}
        todo: list[tuple[str, str, str]] = []
        for item in items:
            if item in results:
                self._count("cache_hits")
            elif item in self._cache:
                results[item] = self._cache[item]
                self._count("cache_hits")
            else:
                results[item] = None
                todo.append(item)
        if todo:
            key = self._check_key()
            headers = {"Content-Type": "application/json"}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            del key
            run = _Run()
            timeout = httpx.Timeout(self.cfg.timeout_s)
            limits = httpx.Limits(max_connections=self.cfg.max_concurrency)
            workers = min(self.cfg.max_concurrency, len(todo))
            with httpx.Client(timeout=timeout, limits=limits, trust_env=not self._local) as client:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal-judge")
                try:
                    futures = [
                        pool.submit(self._grade_one, client, headers, it, run) for it in todo
                    ]
                    verdicts = [f.result() for f in futures]
                except BaseException:
                    run.stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
            headers.clear()
            n_failed = 0
            for item, verdict in zip(todo, verdicts, strict=True):
                results[item] = verdict
                if verdict is None:
                    n_failed += 1
                else:
                    self._cache[item] = verdict
            if n_failed:
                self._count("failures", n_failed)
                log.warning(
                    "LLM judge: %d of %d distinct items ungraded (last error: %s)",
                    n_failed,
                    len(todo),
                    run.last_error or "unknown",
                )
        return [results[item] for item in items]

    def _grade_one(
        self, client, headers: dict, item: tuple[str, str, str], run: _Run
    ) -> float | None:
        question, gold, prediction = item
        payload = {
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {
                    "role": "user",
                    "content": JUDGE_USER_TEMPLATE.format(
                        question=question, gold=gold, prediction=prediction
                    ),
                },
            ],
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
        }
        for attempt in range(self.cfg.max_retries + 1):
            if run.stop.is_set():
                return None
            if attempt:
                self._count("retries")
            self._count("requests")
            try:
                return self._attempt(client, headers, payload)
            except _Fatal as e:
                run.fail(str(e))
                if e.stop_all:
                    run.stop.set()
                log.debug("LLM judge: %s; not retried", e)
                return None
            except _Retryable as e:
                run.fail(str(e))
                if attempt == self.cfg.max_retries:
                    log.debug("LLM judge: %s; out of retries", e)
                    return None
                if e.delay_s is not None:
                    delay = e.delay_s
                else:
                    delay = min(self.cfg.backoff_s * 2.0**attempt, MAX_BACKOFF_S)
                log.debug("LLM judge: %s; retry %d in %.2fs", e, attempt + 1, delay)
                if delay > 0 and run.stop.wait(delay):
                    return None
        return None  # pragma: no cover - the loop always returns

    def _attempt(self, client, headers: dict, payload: dict) -> float:
        """One request. Returns the verdict; raises _Retryable or _Fatal."""
        deadline = time.monotonic() + self.cfg.timeout_s
        try:
            with client.stream("POST", self._url, json=payload, headers=headers) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise _Retryable(f"reply longer than {MAX_REPLY_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise _Retryable(f"timed out after {self.cfg.timeout_s}s")
                status, resp_headers = r.status_code, r.headers
        except httpx.TimeoutException as e:
            raise _Retryable(
                f"timed out after {self.cfg.timeout_s}s ({type(e).__name__})"
            ) from None
        except httpx.HTTPError as e:  # connection refused/reset, protocol errors, bad encoding
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", _retry_after_s(resp_headers))
        if not 200 <= status < 300:
            code = _error_code(bytes(body))
            msg = f"HTTP {status}" + (f" ({code})" if code else "")
            if status in (401, 403):
                raise _Fatal(msg + f"; check the key in ${self.cfg.api_key_env}", stop_all=True)
            raise _Fatal(msg)
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except Exception:
            raise _Retryable("malformed chat-completions reply") from None
        verdict = parse_verdict(content)
        if verdict is None:
            raise _Retryable(f"unparseable verdict {str(content)[:40]!r}")
        return verdict


class _Run:
    """State shared by the workers of one ``grade`` call."""

    def __init__(self):
        self.stop = threading.Event()
        self.last_error: str | None = None

    def fail(self, reason: str) -> None:
        self.last_error = reason
