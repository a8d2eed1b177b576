"""An LLM judge that grades no-passage QA answers yes/no over an OpenAI-compatible API.

Source: the paper (Zweiger et al. 2025, Section 4.2) grades the knowledge-incorporation
answers with GPT-4.1 asked whether a prediction matches the gold answer, yes or no. The
reference implementation counts a question the grader failed on as wrong; here such a
question is *ungraded* (``None``), and the recipe's ``qa.ungraded`` switch ('skip' or
'wrong', applied by the caller) decides what it counts as. ``qa.ungraded='wrong'``
restores the reference behaviour.

Two prompts (``qa.judge.prompt``): ``strict`` (the default; seal's, tagged fields, a hedging
answer is wrong) and ``reference`` (the reference implementation's text verbatim,
knowledge-incorporation/src/utils.py:39-45). Either way a model's answer is fenced
(:func:`judge_messages`) so that it cannot write instructions to the judge outside its field.
Unlike the reference (the API's default temperature, so its un-adapted baseline moves between
identical runs), requests are sent at temperature 0.

Requests go through the official ``openai`` client (``openai.OpenAI``), which does the
HTTP, the timeouts and the retries; this module adds the verdict parsing, the retry
schedule of ``JudgeConfig``, the bounded thread pool, the cache and the ungraded verdicts.

The API key is read from the environment variable named by ``JudgeConfig.api_key_env``
each time it is needed. It is never stored on the judge, logged, put in an exception
message, or written anywhere.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai

from seal.config import JudgeConfig
from seal.errors import SealError

log = logging.getLogger(__name__)

__all__ = [
    "JUDGE_SYSTEM_PROMPT", "JUDGE_USER_TEMPLATE", "REFERENCE_TEMPLATE", "JudgeError", "LLMJudge", "judge_messages", "parse_verdict",
]  # fmt: skip

JUDGE_SYSTEM_PROMPT = (
    "You grade short answers to factual questions. You reply with one word: yes or no."
)

# The fields are delimited by tags so that a prediction cannot pose as instructions; the
# fields are escaped (``fence_tagged``) so that it cannot close its tag either.
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

REFERENCE_TEMPLATE = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly answers the question based solely on the provided gold answer. "
    "Do not use any outside knowledge. The student answer can include additional information, but it must at least fully convey the gold answer and must not contradict it. "
    "Ignore style, phrasing, or extra details that do not affect correctness. Respond ONLY with 'yes' or 'no'.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {pred}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'."
)
"""``qa.judge.prompt: reference``: the reference implementation's grading prompt, word for word
(knowledge-incorporation/src/utils.py:39-45, ``SQUAD_GRADE_TEMPLATE``), sent alone as one user
message; its ``{question}`` is ``Topic: <title>\n<question>`` (src/query/query_server.py:129,
built by ``seal.scoring.judge_question``), its ``{pred}`` the stripped answer (utils.py:109)."""

_LINE_BREAKS = re.compile(r"\s*[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")


def fence_tagged(text: str) -> str:
    """A field of the strict prompt with ``<`` and ``>`` escaped (``&lt;``, ``&gt;``), so that a
    prediction holding ``</prediction>`` (or any tag) cannot close its field and write
    instructions of its own to the judge. Text without angle brackets is unchanged."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def fence_line(text: str) -> str:
    """A field of the reference prompt stripped and kept on its own line: every line break
    (with the spaces around it) becomes one space, so that a prediction cannot start a line of
    its own (a forged ``Gold answer:`` or the closing question) in a prompt without delimiters.
    A one-line answer is only stripped, as the reference does (utils.py:109)."""
    return _LINE_BREAKS.sub(" ", text.strip())


def judge_messages(question: str, gold: str, prediction: str, prompt: str = "strict") -> list[dict]:
    """The chat messages sent to grade one item.

    ``prompt``: ``'strict'`` (seal's: :data:`JUDGE_SYSTEM_PROMPT`, then
    :data:`JUDGE_USER_TEMPLATE` with every field fenced by :func:`fence_tagged`) or
    ``'reference'`` (:data:`REFERENCE_TEMPLATE` as one user message, each field fenced by
    :func:`fence_line`).

    Raises:
        ValueError: an unknown ``prompt``.
    """
    if prompt == "strict":
        user = JUDGE_USER_TEMPLATE.format(question=fence_tagged(question), gold=fence_tagged(gold), prediction=fence_tagged(prediction))
        return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]
    if prompt == "reference":
        # The question's Topic line is the reference's own line break: only gold and prediction are fenced.
        user = REFERENCE_TEMPLATE.format(question=question, gold=fence_line(gold), pred=fence_line(prediction))
        return [{"role": "user", "content": user}]
    raise ValueError(f"unknown judge prompt {prompt!r}; known: strict, reference")


MAX_TOKENS = 8
"""Completion budget of one verdict (``max_tokens`` of the request)."""

RETRY_AFTER_CAP_S = 60.0
"""Longest wait, in seconds, honoured from a ``Retry-After`` header (a longer one is cut)."""

MAX_BACKOFF_S = 60.0
"""Longest single exponential-backoff wait, in seconds."""

_LOCAL_HOSTNAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}

# The item the current worker thread grades: ``sent`` (requests so far, counted by the
# HTTP client's hook) and ``backoff_s``. Per thread, as ``with_options`` copies the client.
_item = threading.local()


class JudgeError(SealError, RuntimeError):
    """The judge cannot run at all: an API key is missing or unusable, or base_url is invalid.

    Messages name the environment variable, never its value.
    """


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


class _Client(openai.OpenAI):
    """``openai.OpenAI`` with the retry schedule of ``JudgeConfig``.

    The client retries connection errors, timeouts, 408, 409, 429 and 5xx itself. Two of
    its hooks (private methods, the same from openai 1.60 to 3.x) are replaced: the wait before a
    retry is what ``Retry-After`` asks, at most ``RETRY_AFTER_CAP_S`` (the client would
    give up on one over two minutes), else ``backoff_s * 2**k`` after the item's (k+1)-th
    request, at most ``MAX_BACKOFF_S`` (the client's own: 0.5 s doubling, jittered); and
    the ``x-should-retry`` header is ignored. Should the hooks vanish in a later client,
    its own schedule applies.
    """

    def _should_retry(self, response) -> bool:
        return response.status_code in (408, 409, 429) or response.status_code >= 500

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):
        wait = self._parse_retry_after_header(response_headers)
        if wait is not None and not math.isnan(wait):
            return max(0.0, min(wait, RETRY_AFTER_CAP_S))
        k = max(getattr(_item, "sent", 1) - 1, 0)
        return min(getattr(_item, "backoff_s", 0.0) * 2.0 ** min(k, 60), MAX_BACKOFF_S)


class LLMJudge:
    """Grade (question, gold, prediction) triples yes/no with a chat-completions model.

    Source: paper Section 4.2 (GPT-4.1 as a yes/no judge). Requests are
    ``POST {base_url}/chat/completions`` through ``openai.OpenAI`` at temperature 0 with
    ``max_tokens=MAX_TOKENS``, at most ``cfg.max_concurrency`` in flight (a thread pool
    of that size).

    Each request has ``cfg.timeout_s`` seconds as the client's timeout (connect, read,
    write and pool timeouts each; not a limit on the whole exchange). An item gets at most
    ``cfg.max_retries + 1`` requests: the client retries connection errors, timeouts,
    408, 409, 429 and 5xx after ``cfg.backoff_s`` seconds doubling (see ``_Client``);
    malformed replies and replies whose first word is neither yes nor no are retried at
    once from the same budget. Other 4xx are not retried; after a 401 or 403 the rest of
    the call is not sent (the key is wrong; requests already in flight end). An item that cannot be graded is ``None``
    (ungraded); unlike the reference, never 0.

    Graded results are cached on the object by the exact triple, so identical items cost
    one request; ungraded ones are asked again by a later call.

    The key comes from the environment variable ``cfg.api_key_env`` when the judge is
    built (to fail early) and again on every ``grade`` call, which builds its client
    (``Authorization: Bearer <key>``) and closes it before returning. A loopback
    ``base_url`` (localhost, 127.0.0.0/8, ::1) may run without a key (no Authorization
    header is sent) and never goes through a proxy.

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
        self._cache: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0}
        self.last_error: str | None = None  # why the last ungraded item was ungraded (no key value)
        self._check_key()

    def __repr__(self) -> str:
        return (
            f"LLMJudge(base_url={self.cfg.base_url!r}, model={self.cfg.model!r}, "
            f"api_key_env={self.cfg.api_key_env!r})"
        )

    @property
    def stats(self) -> dict[str, int]:
        """Counters since construction (a copy): ``requests`` (HTTP requests sent, retries
        included), ``retries`` (requests after an item's first), ``failures`` (distinct
        items left ungraded, once per ``grade`` call), ``cache_hits`` (items answered from
        the cache or by a duplicate in the same call)."""
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
        used its retries: per item about ``(max_retries + 1) * timeout_s`` plus the backoff
        waits, unless a server trickles its reply (``timeout_s`` bounds each read, not the
        whole exchange). An interrupt stops new requests; those in flight end with their
        retries.

        Raises:
            JudgeError: as for the constructor (the key is read again here).
        """
        items = [(str(q), str(g), str(p)) for q, g, p in items]
        results: dict[tuple[str, str, str], float | None] = {}
        todo: list[tuple[str, str, str]] = []
        for item in items:
            if item in results or item in self._cache:
                results[item] = self._cache.get(item)
                self._count("cache_hits")
            else:
                results[item] = None
                todo.append(item)
        if not todo:
            return [results[item] for item in items]
        key = self._check_key()
        stop = threading.Event()  # set by a 401/403 or an interrupt: send nothing more
        extra = {} if key else {"Authorization": openai.Omit()}
        http = openai.DefaultHttpxClient(
            trust_env=not self._local, event_hooks={"request": [self._on_request]}
        )
        with _Client(
            api_key=key or "unused",  # never sent without a key: Authorization is omitted
            base_url=self.cfg.base_url,
            timeout=self.cfg.timeout_s,
            max_retries=self.cfg.max_retries,
            http_client=http,
        ) as client:
            del key
            workers = min(self.cfg.max_concurrency, len(todo))
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal-judge")
            try:
                futures = [pool.submit(self._grade_one, client, it, extra, stop) for it in todo]
                outcomes = [f.result() for f in futures]
            except BaseException:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        errors = [e for v, e in outcomes if v is None]
        for item, (verdict, _) in zip(todo, outcomes, strict=True):
            results[item] = verdict
            if verdict is not None:
                self._cache[item] = verdict
        if errors:
            self._count("failures", len(errors))
            self.last_error = next((e for e in reversed(errors) if e), "unknown")
            log.warning(
                "LLM judge: %d of %d distinct items ungraded (last error: %s)",
                len(errors),
                len(todo),
                next((e for e in reversed(errors) if e), "unknown"),
            )
        return [results[item] for item in items]

    def _on_request(self, request) -> None:
        """The HTTP client's request hook: count every request sent, retries included."""
        _item.sent = getattr(_item, "sent", 0) + 1
        self._count("requests")

    def _grade_one(
        self, client: _Client, item: tuple[str, str, str], extra: dict, stop: threading.Event
    ) -> tuple[float | None, str | None]:
        """(verdict, None), or (None, why) for an ungraded item; runs in a pool thread."""
        messages = judge_messages(*item, prompt=self.cfg.prompt)
        _item.sent, _item.backoff_s = 0, self.cfg.backoff_s
        error = None
        try:
            while not stop.is_set() and _item.sent <= self.cfg.max_retries:
                sent = _item.sent
                try:
                    reply = client.with_options(
                        max_retries=self.cfg.max_retries - sent
                    ).chat.completions.create(
                        model=self.cfg.model,
                        messages=messages,
                        temperature=0,
                        max_tokens=MAX_TOKENS,
                        extra_headers=extra,
                    )
                    content = reply.choices[0].message.content
                except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                    stop.set()
                    return None, f"{_status(e)}; check the key in ${self.cfg.api_key_env}"
                except openai.APIStatusError as e:  # another 4xx, or out of retries
                    return None, _status(e)
                except openai.APITimeoutError:
                    return None, f"timed out after {self.cfg.timeout_s}s"
                except openai.APIConnectionError as e:
                    return None, f"connection failed ({type(e.__cause__).__name__})"
                except (ValueError, TypeError, AttributeError, IndexError):
                    if _item.sent == sent:
                        raise  # nothing was sent: a bug here, not a bad reply
                    error = "malformed chat-completions reply"
                    continue
                verdict = parse_verdict(content)
                if verdict is not None:
                    return verdict, None
                error = f"unparseable verdict {str(content)[:40]!r}"
            return None, error
        finally:
            self._count("retries", max(_item.sent - 1, 0))


def _status(e: openai.APIStatusError) -> str:
    """``HTTP <status> (<type>/<code>)``: never the error's message, which for a 401 can
    echo part of the key."""
    code = "/".join(str(x) for x in (e.type, e.code) if x)[:80]
    return f"HTTP {e.status_code}" + (f" ({code})" if code else "")
