"""Distillers: retrieved neighbours -> a short experience report (the text the denoiser is conditioned on).

`OfflineDistiller` (the default) is deterministic and states only facts of the neighbours: how many, their
age range and sex mix, the median (and, for heart rate, the range) of each measured feature, and the codes most
of them share, per view, by their English descriptions. It is invariant to the neighbours' order.

`LLMDistiller` sends those facts to any OpenAI-compatible chat-completions endpoint (`base_url`, `model`, key
from the environment variable `api_key_env`; no key means no Authorization header, as local servers want).
The facts are derived from patient records, so: HTTPS is required unless the host is this machine (loopback);
the key goes to the configured host only (redirects are not followed) and is never logged; each request has a
total deadline (a server that drips bytes cannot hold it longer); retries with backoff on timeouts / 429 / 5xx;
after `max_failures` failed requests in a row the endpoint is not called again (circuit breaker). Replies are
capped in length and cached on disk. When the endpoint fails the offline report is used, and counted
(`fallbacks`), so a run never stops for a network error and its manifest says how many reports fell back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import ipaddress
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np

from sediff_jax.experience.profiles import FEATURE_NAMES, ProfileCorpus
from sediff_jax.io.atomic import atomic_path
from sediff_jax.errors import SediffError

log = logging.getLogger(__name__)
# Experience reports are encoded with this many tokens (report text gets 64): the offline report fits in it.
EXPERIENCE_MAX_TOKENS = 128
# QTc (Bazett) stands for QT, and at most 2 codes per view, to keep reports short.
FEATURE_PHRASES = {"pr_ms": "PR {:.0f} ms", "qrs_ms": "QRS {:.0f} ms", "qtc_bazett_ms": "QTc {:.0f} ms",
                   "qrs_axis_deg": "axis {:.0f} deg"}


# Rhythms without P waves (PTB-XL codes; LUDB and others by name): a PR interval means nothing there.
NO_P_WAVE_CODES = ("AFIB", "AFLT")
NO_P_WAVE_WORDS = ("fibrillation", "flutter")


def lacks_p_waves(corpus: ProfileCorpus, rows: Sequence[int]) -> bool:
    """Whether at least half of the profiles at `rows` have a rhythm without P waves (atrial fibrillation or
    flutter) in their rhythm view."""
    sets = corpus.codes.get("rhythm")
    if sets is None or not len(rows):
        return False

    def no_p(code: str) -> bool:
        text = f"{code} {corpus.descriptions.get(code, '')}".lower()
        return code in NO_P_WAVE_CODES or any(word in text for word in NO_P_WAVE_WORDS)

    hits = sum(any(no_p(code) for code in sets.row(int(r))) for r in rows)
    return 2 * hits >= len(rows)


class OfflineDistiller:
    """Template report from the neighbours (see the module docstring). max_per_view: codes named per view."""

    name = "offline"

    def __init__(self, max_per_view: int = 2):
        self.max_per_view = max_per_view

    def distill(self, corpus: ProfileCorpus, rows: Sequence[int]) -> str:
        """The report for corpus rows `rows` ('' for no neighbours)."""
        rows = np.sort(np.asarray(rows, np.int64))
        n = len(rows)
        if n == 0:
            return ""
        head = f"Experience from {n} similar patient{'s' if n > 1 else ''}"
        ages = corpus.age[rows][np.isfinite(corpus.age[rows])]
        if ages.size:
            lo, hi = int(round(ages.min())), int(round(ages.max()))
            head += f", aged {lo}" + (f"-{hi}" if hi != lo else "")
        known = corpus.sex[rows] >= 0
        if known.any():
            head += f", {int(np.sum(corpus.sex[rows] == 1))} female"
        parts = []
        features = corpus.features[rows]
        hr = features[:, FEATURE_NAMES.index("hr_bpm")]
        hr = hr[np.isfinite(hr)]
        if hr.size:
            part = f"heart rate {np.median(hr):.0f} bpm"
            if hr.size > 1 and round(hr.min()) != round(hr.max()):
                part += f" ({hr.min():.0f}-{hr.max():.0f})"
            parts.append(part)
        no_p_waves = lacks_p_waves(corpus, rows)
        for name, phrase in FEATURE_PHRASES.items():
            if name == "pr_ms" and no_p_waves:
                continue  # (a PR interval of fibrillating or flutter atria is a detector's artefact)
            values = features[:, FEATURE_NAMES.index(name)]
            values = values[np.isfinite(values)]
            if values.size:
                parts.append(phrase.format(float(np.median(values))))
        sentences = [head + (": " + ", ".join(parts) if parts else "") + "."]
        need = 2 if n >= 3 else 1
        for view, sets in corpus.codes.items():
            counts: dict[str, int] = {}
            for r in rows:
                for code in sets.row(int(r)):
                    counts[code] = counts.get(code, 0) + 1
            common = sorted(((-c, corpus.describe(code)) for code, c in counts.items() if c >= need))
            named = [f"{text} ({-c}/{n})" for c, text in common[: self.max_per_view]]
            if named:
                sentences.append(f"{view.capitalize()}: " + ", ".join(named) + ".")
        return " ".join(sentences)


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat-completions endpoint. base_url: 'https://...' or, for a server on this machine,
    'http://127.0.0.1:8000/v1'.  timeout_s: total deadline of one request (connect, send, headers and body).
    max_retries: after the first try (timeouts, HTTP 429 and 5xx only).  backoff_s: first wait, doubled each
    retry.  max_failures: failed requests in a row after which the endpoint is given up for the run.
    max_reply_chars: longer replies are cut at the last sentence end inside the cap.  max_response_bytes: a
    bigger HTTP body is refused.  cache_path: JSON cache of replies."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 30.0
    max_retries: int = 2
    backoff_s: float = 1.0
    max_tokens: int = 160
    max_reply_chars: int = 600
    max_response_bytes: int = 1_000_000
    temperature: float = 0.0
    cache_path: str | None = None
    max_failures: int = 3

    def __post_init__(self):
        check_endpoint(self.base_url)
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 3600):
            raise ValueError(f"LLM timeout {self.timeout_s!r} s must be in (0, 3600]")
        if self.max_retries < 0 or self.max_failures < 1:
            raise ValueError(f"max_retries={self.max_retries} must be >= 0 and max_failures={self.max_failures} "
                             ">= 1")


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(base_url: str) -> urllib.parse.SplitResult:
    """The parsed `base_url`; ValueError unless it is https://host/..., or http:// to this machine (loopback)."""
    url = urllib.parse.urlsplit(base_url or "")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"LLM base URL {base_url!r} must be an http(s) URL with a host")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        raise ValueError(f"LLM base URL {base_url!r}: plain http sends the key and patient-derived facts "
                         "unencrypted; use https (http is allowed only to this machine: 127.0.0.1, ::1, localhost)")
    if url.username or url.password:
        raise ValueError(f"LLM base URL for host {url.hostname!r} must not hold credentials (use the key's "
                         "environment variable)")
    return url


SYSTEM_PROMPT = ("You are a cardiologist. From the facts about similar patients, write a concise clinical experience "
                 "summary for generating this patient's ECG, in at most three sentences. Use only the given facts.")


class LLMError(SediffError, RuntimeError):
    """The endpoint could not give a usable reply (the message says why)."""


class LLMDistiller:
    """Distils through an LLM; falls back to the offline report (and logs why) when the endpoint fails.
    `last_error` holds the reason of the last fallback (None after a success)."""

    name = "llm"

    def __init__(self, config: LLMConfig, offline: OfflineDistiller | None = None):
        self.config = config
        self.offline = offline or OfflineDistiller()
        self.last_error: str | None = None
        self.replies = 0  # reports written by the endpoint (cached ones included)
        self.fallbacks = 0  # reports that fell back to the offline report
        self.consecutive_failures = 0
        self._cache: dict[str, str] = {}
        if config.cache_path and os.path.exists(config.cache_path):
            try:
                self._cache = json.loads(Path(config.cache_path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                log.warning("%s: unreadable LLM cache (%s); starting a new one", config.cache_path, e)

    def distill(self, corpus: ProfileCorpus, rows: Sequence[int]) -> str:
        facts = self.offline.distill(corpus, rows)
        if not facts:
            return ""
        try:
            reply = self.complete(facts)
        except LLMError as e:
            self.last_error = str(e)
            self.fallbacks += 1
            if not self.given_up:  # once the breaker is open, one warning said it all
                log.warning("LLM distiller: %s; using the offline report instead", e)
            return facts
        self.last_error = None
        self.replies += 1
        return reply

    @property
    def given_up(self) -> bool:
        """Whether the circuit breaker is open (max_failures failed requests in a row)."""
        return self.consecutive_failures >= self.config.max_failures

    def summary(self) -> dict:
        """For manifests: where reports came from."""
        return {"base_url": self.config.base_url, "model": self.config.model, "llm_reports": self.replies,
                "offline_fallbacks": self.fallbacks, "gave_up": self.given_up, "last_error": self.last_error}

    def complete(self, facts: str) -> str:
        """The endpoint's reply to `facts` (cached), cut to `max_reply_chars`; raises LLMError."""
        c = self.config
        body = {"model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": facts}]}
        key = hashlib.sha256(json.dumps([c.base_url, body], sort_keys=True).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        if self.given_up:
            raise LLMError(f"{c.base_url}: given up after {self.consecutive_failures} failed requests in a row")
        try:
            reply = cap_reply(self._request(body), c.max_reply_chars)
        except LLMError:
            self.consecutive_failures += 1
            if self.given_up:
                log.warning("LLM distiller: %d failed requests in a row; not calling %s again in this run",
                            self.consecutive_failures, c.base_url)
            raise
        self.consecutive_failures = 0
        if not reply:
            raise LLMError(f"{c.base_url}: empty reply")
        self._cache[key] = reply
        if c.cache_path:
            with atomic_path(c.cache_path, suffix=".json") as tmp:
                tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True), encoding="utf-8")
        return reply

    def _request(self, body: dict) -> str:
        c = self.config
        url = check_endpoint(c.base_url)
        where = f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(c.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        wait, problem = c.backoff_s, ""
        for attempt in range(c.max_retries + 1):
            if attempt:
                time.sleep(wait)
                wait *= 2
            try:
                status, reason, raw = _post(url, url.path.rstrip("/") + "/chat/completions", data, headers,
                                            c.timeout_s, c.max_response_bytes)
            except TimeoutError:
                problem = f"{where}: no reply within {c.timeout_s:g} s"
                continue
            except OSError as e:
                raise LLMError(f"{where}: cannot connect ({e.strerror or e})") from None
            except http.client.HTTPException as e:
                raise LLMError(f"{where}: broken HTTP reply ({type(e).__name__})") from None
            if status == 429 or status >= 500:
                problem = f"{where}: HTTP {status} {reason}"
                continue
            if 300 <= status < 400:
                raise LLMError(f"{where}: HTTP {status} redirect not followed (the key goes to the configured host "
                               "only)")
            if status != 200:
                raise LLMError(f"{where}: HTTP {status} {reason}")
            if len(raw) > c.max_response_bytes:
                raise LLMError(f"{where}: response larger than {c.max_response_bytes} bytes")
            return parse_reply(raw, where)
        raise LLMError(f"{problem} (after {c.max_retries + 1} tries)")


def _post(url: urllib.parse.SplitResult, path: str, data: bytes, headers: dict, deadline_s: float,
          max_bytes: int) -> tuple[int, str, bytes]:
    """One POST with a total deadline: a watchdog shuts the socket when `deadline_s` has passed, whatever the
    server is doing (TimeoutError then). Returns (status, reason, up to max_bytes + 1 body bytes)."""
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    connection = cls(url.hostname, url.port, timeout=deadline_s)
    expired = threading.Event()
    sockets = []  # (the connection hands its socket to the response and forgets it, so keep it here)

    def expire():
        expired.set()
        for sock in sockets + [connection.sock]:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    watchdog = threading.Timer(deadline_s, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.connect()
        sockets.append(connection.sock)
        if expired.is_set():
            raise TimeoutError
        connection.request("POST", path or "/", body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read(max_bytes + 1)
        if expired.is_set():
            raise TimeoutError
        return response.status, response.reason, raw
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


def parse_reply(raw: bytes, url: str = "") -> str:
    """choices[0].message.content of a chat-completions response; LLMError for anything else."""
    try:
        payload = json.loads(raw.decode("utf-8"))
        content = payload["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, ValueError) as e:
        raise LLMError(f"{url}: malformed JSON reply ({e})") from None
    except (KeyError, IndexError, TypeError):
        raise LLMError(f"{url}: reply has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise LLMError(f"{url}: reply content is {type(content).__name__}, not text")
    return " ".join(content.split())


def cap_reply(text: str, max_chars: int) -> str:
    """`text` if it fits, else cut at the last sentence end within `max_chars` (or at a word, with '...')."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if end >= max_chars // 3:
        return head[: end + 1]
    return head[: max(1, head.rfind(" "))].rstrip(" ,;:") + "..."


def make_distiller(kind: str = "offline", llm: LLMConfig | None = None):
    """'offline' or 'llm' (which needs `llm`)."""
    if kind == "offline":
        return OfflineDistiller()
    if kind == "llm":
        if llm is None or not llm.base_url or not llm.model:
            raise ValueError("the LLM distiller needs a base URL and a model name")
        return LLMDistiller(llm)
    raise ValueError(f"unknown distiller {kind!r}; expected 'offline' or 'llm'")

