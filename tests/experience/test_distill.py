"""Distillers: the offline report is deterministic and states only the neighbours' facts; the LLM client
against a local stub server (timeouts, HTTP errors, malformed JSON, oversize replies, retries, cache)."""

import http.server
import json
import re
import threading
import time

import numpy as np
import pytest

from sediff_jax.experience import FEATURE_NAMES, Profile, ProfileCorpus
from sediff_jax.experience.distill import (
    EXPERIENCE_MAX_TOKENS, LLMConfig, LLMDistiller, LLMError, OfflineDistiller, cap_reply, make_distiller, parse_reply,
)

VIEWS = ("diagnostic", "form", "rhythm")
DESCRIPTIONS = {"NORM": "normal ECG", "LVH": "left ventricular hypertrophy", "SR": "sinus rhythm",
                "AFIB": "atrial fibrillation", "IMI": "inferior myocardial infarction"}


def corpus_of_neighbours(seed=0, n=6, record_ids=None) -> ProfileCorpus:
    """n training-split PTB-XL-like profiles (record ids r0.. unless given; one patient each)."""
    record_ids = record_ids or [f"r{i}" for i in range(n)]
    rng = np.random.default_rng(seed)
    profiles = []
    for i in range(n):
        codes = {"diagnostic": tuple(rng.choice(["NORM", "LVH", "IMI"], rng.integers(1, 3), replace=False)),
                 "form": (), "rhythm": (str(rng.choice(["SR", "AFIB"], p=[0.8, 0.2])),)}
        features = dict(zip(FEATURE_NAMES, [rng.uniform(50, 110), rng.uniform(120, 200), rng.uniform(80, 120),
                                            rng.uniform(350, 440), rng.uniform(380, 460), rng.uniform(-30, 90)]))
        if i == 0:
            features["pr_ms"] = float("nan")  # a neighbour without P waves
        profiles.append(Profile(record_ids[i], f"p{i}", "train", float(rng.integers(30, 85)),
                                str(rng.choice(["male", "female"])), codes, features))
    return ProfileCorpus.from_profiles(profiles, VIEWS, DESCRIPTIONS)


def test_offline_report_states_only_facts_of_the_neighbours():
    corpus = corpus_of_neighbours()
    rows = [0, 2, 3, 5]
    report = OfflineDistiller().distill(corpus, rows)
    assert report == OfflineDistiller().distill(corpus, rows[::-1])  # deterministic, order-free
    assert report.startswith("Experience from 4 similar patients")
    numbers = {int(x) for x in re.findall(r"\d+", report)}
    f = corpus.features[rows]
    allowed = {4, 2, 1, 3, 0}  # counts of n = 4
    allowed |= {int(round(a)) for a in corpus.age[rows]}
    for k in range(len(FEATURE_NAMES)):
        v = f[:, k][np.isfinite(f[:, k])]
        allowed |= {int(round(np.median(v))), int(round(v.min())), int(round(v.max()))}
    assert numbers <= allowed, numbers - allowed
    # every finding named is a description of a code some neighbour has, with its true count
    for text, count in re.findall(r"([a-z][a-z ]+) \((\d)/4\)", report):
        codes = [c for c, d in DESCRIPTIONS.items() if d == text.strip()]
        assert codes, text
        have = sum(codes[0] in corpus.profile(r).codes["diagnostic"] + corpus.profile(r).codes["rhythm"]
                   for r in rows)
        assert have == int(count) >= 2
    for code, text in DESCRIPTIONS.items():
        if text in report:
            assert any(code in sum(corpus.profile(r).codes.values(), ()) for r in rows)
    assert OfflineDistiller().distill(corpus, []) == ""


def test_offline_report_fits_the_text_encoder():
    from sediff_jax.text import make_text_encoder

    report = OfflineDistiller().distill(corpus_of_neighbours(n=8), range(8))
    encoder = make_text_encoder("minilm", max_length=EXPERIENCE_MAX_TOKENS)
    ids, mask = encoder.tokenize([report])
    assert mask.sum() < EXPERIENCE_MAX_TOKENS, report  # nothing is cut


class Stub(http.server.BaseHTTPRequestHandler):
    """Answers per `Stub.script`: a list of actions consumed one per request."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.seen.append((self.headers.get("Authorization"), body))
        action = Stub.script.pop(0) if Stub.script else ("ok", "Fine.")
        kind, value = action
        if kind == "sleep":
            time.sleep(value)
            kind, value = "ok", "late"
        if kind == "status":
            self.send_response(value)
            self.end_headers()
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.end_headers()
            return
        if kind == "drip":  # headers at once, then one body byte every 0.1 s for `value` seconds
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(int(value / 0.1)):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        payload = (value.encode() if kind == "raw" else
                   json.dumps({"choices": [{"message": {"role": "assistant", "content": value}}]}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except BrokenPipeError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Stub.script, Stub.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def distiller(url, **kw):
    return LLMDistiller(LLMConfig(base_url=url, model="stub-model", timeout_s=kw.pop("timeout_s", 2.0),
                                  backoff_s=0.01, **kw))


def test_llm_reply_is_used_and_the_key_comes_from_the_environment(stub, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    corpus = corpus_of_neighbours()
    Stub.script = [("ok", "  Similar patients were in sinus rhythm\n with a normal QRS.  ")]
    d = distiller(stub, api_key_env="STUB_KEY")
    assert d.distill(corpus, [1, 2]) == "Similar patients were in sinus rhythm with a normal QRS."
    auth, body = Stub.seen[0]
    assert auth == "Bearer sk-test" and body["model"] == "stub-model" and body["temperature"] == 0.0
    assert body["messages"][1]["content"] == OfflineDistiller().distill(corpus, [1, 2])
    assert d.last_error is None


@pytest.mark.parametrize("script, reason", [
    ([("status", 400)], "HTTP 400"),
    ([("raw", "{not json")], "malformed JSON"),
    ([("raw", json.dumps({"choices": []}))], "no choices"),
    ([("status", 503)] * 3, "HTTP 503.*after 3 tries"),
    ([("sleep", 1.0)] * 3, "no reply within 0.3 s"),
])
def test_llm_failures_fall_back_to_the_offline_report(stub, script, reason):
    corpus = corpus_of_neighbours()
    Stub.script = list(script)
    d = distiller(stub, timeout_s=0.3)
    assert d.distill(corpus, [0, 1, 2]) == OfflineDistiller().distill(corpus, [0, 1, 2])
    assert re.search(reason, d.last_error), d.last_error
    with pytest.raises(LLMError, match=reason.split(".*")[0]):
        Stub.script = list(script)
        d.complete("facts")


def test_llm_retries_transient_errors_then_succeeds_and_caches(stub, tmp_path):
    cache = tmp_path / "llm_cache.json"
    Stub.script = [("status", 500), ("status", 429), ("ok", "Recovered.")]
    d = distiller(stub, cache_path=str(cache))
    assert d.complete("facts A") == "Recovered." and len(Stub.seen) == 3
    # Cached: a new distiller with the same cache file does not call the endpoint.
    d2 = distiller(stub, cache_path=str(cache))
    assert d2.complete("facts A") == "Recovered." and len(Stub.seen) == 3
    assert json.loads(cache.read_text())


def test_oversize_replies_are_capped_and_huge_bodies_refused(stub):
    long = "First finding. " * 100
    Stub.script = [("ok", long)]
    reply = distiller(stub, max_reply_chars=100).complete("x")
    assert len(reply) <= 100 and reply.endswith(".")
    Stub.script = [("ok", "y" * 5000)]
    with pytest.raises(LLMError, match="larger than 1000 bytes"):
        distiller(stub, max_response_bytes=1000).complete("z")


def test_cap_parse_and_factory_edges():
    assert cap_reply("short", 10) == "short"
    assert cap_reply("word " * 40, 30).endswith("...")
    with pytest.raises(LLMError, match="not text"):
        parse_reply(json.dumps({"choices": [{"message": {"content": 3}}]}).encode())
    with pytest.raises(ValueError, match="base URL"):
        make_distiller("llm")
    with pytest.raises(ValueError, match="unknown distiller"):
        make_distiller("gpt")


def test_unreachable_endpoint_falls_back_without_retrying_forever():
    d = distiller("http://127.0.0.1:9/v1")  # discard port: connection refused
    corpus = corpus_of_neighbours()
    assert d.distill(corpus, [0]) == OfflineDistiller().distill(corpus, [0])
    assert "cannot connect" in d.last_error


def test_plain_http_only_to_this_machine_and_no_credentials_in_the_url():
    for url in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1",
                "https://api.example.com/v1"):
        LLMConfig(base_url=url, model="m")
    for url, message in (("http://api.example.com/v1", "use https"), ("http://10.0.0.5/v1", "use https"),
                         ("ftp://127.0.0.1/v1", "http\\(s\\) URL"), ("https://user:pw@example.com/v1", "credentials"),
                         ("", "http\\(s\\) URL")):
        with pytest.raises(ValueError, match=message):
            LLMConfig(base_url=url, model="m")
    with pytest.raises(ValueError, match="timeout"):
        LLMConfig(base_url="https://example.com/v1", model="m", timeout_s=-1)


def test_a_dripping_server_cannot_hold_a_request_past_its_deadline(stub):
    Stub.script = [("drip", 5.0)]
    d = distiller(stub, timeout_s=0.5, max_retries=0)
    start = time.monotonic()
    with pytest.raises(LLMError, match="no reply within 0.5 s"):
        d.complete("facts")
    assert time.monotonic() - start < 1.5  # a per-read timeout would wait for the whole 5 s drip


def test_redirects_are_not_followed_so_the_key_stays_with_the_host(stub, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    Stub.script = [("redirect", "http://127.0.0.2:9/v1/chat/completions")]
    with pytest.raises(LLMError, match="redirect not followed") as error:
        distiller(stub, api_key_env="STUB_KEY").complete("facts")
    assert len(Stub.seen) == 1 and "sk-test" not in str(error.value)  # (and the key is never in a message)


def test_the_breaker_stops_calling_a_failing_endpoint_and_the_fallbacks_are_counted(stub):
    corpus = corpus_of_neighbours()
    Stub.script = [("status", 400)] * 3 + [("ok", "Never asked for.")]
    d = distiller(stub, max_failures=3)
    offline = OfflineDistiller().distill(corpus, [0, 1])
    assert [d.distill(corpus, [0, 1]) for _ in range(5)] == [offline] * 5
    assert len(Stub.seen) == 3 and d.given_up  # the last two never reached the endpoint
    assert d.summary()["offline_fallbacks"] == 5 and d.summary()["llm_reports"] == 0
    assert "given up" in d.last_error


def test_no_pr_interval_where_the_neighbours_beat_without_p_waves():
    """Most neighbours in atrial fibrillation or flutter (PTB-XL codes, or a dataset's own words): no 'PR';
    a sinus majority keeps it."""
    def corpus(rhythms, descriptions=DESCRIPTIONS):
        profiles = [Profile(f"r{i}", f"p{i}", "train", 60.0, "male", {"diagnostic": ("NORM",), "form": (),
                                                                       "rhythm": (r,)},
                            dict(zip(FEATURE_NAMES, [80.0, 160.0, 90.0, 380.0, 420.0, 30.0])))
                    for i, r in enumerate(rhythms)]
        return ProfileCorpus.from_profiles(profiles, VIEWS, descriptions)

    distill = OfflineDistiller().distill
    assert "PR " not in distill(corpus(["AFIB", "AFIB", "AFLT", "SR"]), [0, 1, 2, 3])
    assert "PR 160 ms" in distill(corpus(["AFIB", "SR", "SR", "SR"]), [0, 1, 2, 3])
    ludb = corpus(["Atrial fibrillation", "Atrial flutter, typical", "Sinus rhythm"], {})
    assert "PR " not in distill(ludb, [0, 1, 2]) and "QRS 90 ms" in distill(ludb, [0, 1, 2])
