"""Distillers: retrieved neighbours -> a short experience report (the text the denoiser is conditioned on).

`OfflineDistiller` (the default) is deterministic and states only facts of the neighbours: how many, their
age range and sex mix, the median (and, for heart rate, the range) of each measured feature, and the codes most
of them share, per view, by their English descriptions. It is invariant to the neighbours' order.

`LLMDistiller` sends those facts to any OpenAI-compatible chat-completions endpoint (`base_url`, `model`, key
from the environment variable `api_key_env`; no key means no Authorization header, as local servers want),
with a timeout, retries with backoff on timeouts / 429 / 5xx, a cap on the reply's length, and an on-disk cache.
When the endpoint fails it logs why and returns the offline report, so a run never stops for a network error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from sediff_jax.experience.profiles import FEATURE_NAMES, ProfileCorpus
from sediff_jax.io.atomic import atomic_path

log = logging.getLogger(__name__)
# Experience reports are encoded with this many tokens (report text gets 64): the offline report fits in it.
EXPERIENCE_MAX_TOKENS = 128
# QTc (Bazett) stands for QT, and at most 2 codes per view, to keep reports short.
FEATURE_PHRASES = {"pr_ms": "PR {:.0f} ms", "qrs_ms": "QRS {:.0f} ms", "qtc_bazett_ms": "QTc {:.0f} ms",
                   "qrs_axis_deg": "axis {:.0f} deg"}


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
        for name, phrase in FEATURE_PHRASES.items():
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
    """An OpenAI-compatible chat-completions endpoint. base_url: e.g. 'http://127.0.0.1:8000/v1'.
    timeout_s: per request.  max_retries: after the first try (timeouts, HTTP 429 and 5xx only).
    backoff_s: first wait, doubled each retry.  max_reply_chars: longer replies are cut at the last sentence
    end inside the cap.  max_response_bytes: a bigger HTTP body is refused.  cache_path: JSON cache of replies."""

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


SYSTEM_PROMPT = ("You are a cardiologist. From the facts about similar patients, write a concise clinical experience "
                 "summary for generating this patient's ECG, in at most three sentences. Use only the given facts.")


class LLMError(RuntimeError):
    """The endpoint could not give a usable reply (the message says why)."""


class LLMDistiller:
    """Distils through an LLM; falls back to the offline report (and logs why) when the endpoint fails.
    `last_error` holds the reason of the last fallback (None after a success)."""

    name = "llm"

    def __init__(self, config: LLMConfig, offline: OfflineDistiller | None = None):
        self.config = config
        self.offline = offline or OfflineDistiller()
        self.last_error: str | None = None
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
            log.warning("LLM distiller: %s; using the offline report instead", e)
            return facts
        self.last_error = None
        return reply

    def complete(self, facts: str) -> str:
        """The endpoint's reply to `facts` (cached), cut to `max_reply_chars`; raises LLMError."""
        c = self.config
        body = {"model": c.model, "temperature": c.temperature, "max_tokens": c.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": facts}]}
        key = hashlib.sha256(json.dumps([c.base_url, body], sort_keys=True).encode()).hexdigest()
        if key in self._cache:
            return self._cache[key]
        reply = cap_reply(self._request(body), c.max_reply_chars)
        if not reply:
            raise LLMError(f"{c.base_url}: empty reply")
        self._cache[key] = reply
        if c.cache_path:
            with atomic_path(c.cache_path, suffix=".json") as tmp:
                tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True), encoding="utf-8")
        return reply

    def _request(self, body: dict) -> str:
        c = self.config
        url = c.base_url.rstrip("/") + "/chat/completions"
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
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                    raw = response.read(c.max_response_bytes + 1)
            except urllib.error.HTTPError as e:
                problem = f"{url}: HTTP {e.code} {e.reason}"
                if e.code == 429 or e.code >= 500:
                    continue
                raise LLMError(problem) from None
            except (socket.timeout, TimeoutError) as e:
                problem = f"{url}: no reply within {c.timeout_s:g} s ({e})"
                continue
            except urllib.error.URLError as e:
                if isinstance(e.reason, (socket.timeout, TimeoutError)):
                    problem = f"{url}: no reply within {c.timeout_s:g} s"
                    continue
                raise LLMError(f"{url}: cannot connect ({e.reason})") from None
            if len(raw) > c.max_response_bytes:
                raise LLMError(f"{url}: response larger than {c.max_response_bytes} bytes")
            return parse_reply(raw, url)
        raise LLMError(f"{problem} (after {c.max_retries + 1} tries)")


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

