"""Property-based fuzzing (hypothesis) of what reads user input: the WFDB reader (truncated, bit-flipped and
rewritten headers and data), the prompt, prompts-file and rr_ms parsers, and a model folder's config.json checks.
Each input is either accepted with a sane result or refused with our own error naming the problem; never another
exception, never a partial output. `make test` runs FAST examples per property, the slow suite MANY.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e .[test]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sediff_jax.checkpoints import CheckpointError  # noqa: E402
from sediff_jax.checkpoints.spec import validate_model_config  # noqa: E402
from sediff_jax.data.wfdb_reader import RecordError, read_record  # noqa: E402
from sediff_jax.generation import PromptError, make_prompt  # noqa: E402
from sediff_jax.generation.prompts import read_prompts  # noqa: E402
from sediff_jax.generation.rhythm import RhythmError, rhythm_from_rr  # noqa: E402
from tests.data.wfdb_fixtures import write_record  # noqa: E402

FAST, MANY = 200, 2000


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                    print_blob=False)


# --- WFDB reader ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_record(tmp_path_factory) -> dict[str, bytes]:
    """A valid 12-lead record (2 s, 100 Hz, format 16) as the bytes of its .hea and .dat."""
    folder = tmp_path_factory.mktemp("clean")
    t = np.arange(200) / 100.0
    signal = np.stack([0.5 * np.sin(2 * np.pi * (1 + k / 10) * t) for k in range(12)], axis=1)
    base = write_record(str(folder), "r", signal, 100.0)
    return {ext: open(base + ext, "rb").read() for ext in (".hea", ".dat")}


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from([".hea", ".dat"]), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.sampled_from([".hea", ".dat"]), st.lists(st.tuples(st.floats(0, 1),
                                                                                      st.integers(0, 7)),
                                                                            min_size=1, max_size=8)),
    st.tuples(st.just("header_line"), st.integers(0, 13), st.text(max_size=60)),
    st.tuples(st.just("record_line"), st.sampled_from(["fs", "length", "signals"]),
              st.one_of(st.integers(-10**6, 10**9).map(str), st.floats(allow_nan=True).map(str),
                        st.text(max_size=8))),
)


def _mutate(files: dict[str, bytes], mutation) -> dict[str, bytes]:
    files = dict(files)
    kind = mutation[0]
    if kind == "truncate":
        _, ext, fraction = mutation
        files[ext] = files[ext][: int(len(files[ext]) * fraction)]
    elif kind == "flip":
        _, ext, flips = mutation
        data = bytearray(files[ext])
        for where, bit in flips:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
        files[ext] = bytes(data)
    elif kind == "header_line":
        _, line, text = mutation
        lines = files[".hea"].decode("latin-1").split("\n")
        lines[min(line, len(lines) - 1)] = text
        files[".hea"] = "\n".join(lines).encode("utf-8", "replace")
    else:  # one field of the record line: "r 12 100 200"
        _, field, value = mutation
        lines = files[".hea"].decode("latin-1").split("\n")
        parts = lines[0].split()
        parts[{"signals": 1, "fs": 2, "length": 3}[field]] = value.replace("\n", " ") or "0"
        lines[0] = " ".join(parts)
        files[".hea"] = "\n".join(lines).encode("utf-8", "replace")
    return files


def _check_reader(clean: dict[str, bytes], mutation) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for ext, data in _mutate(clean, mutation).items():
            with open(os.path.join(folder, "r" + ext), "wb") as f:
                f.write(data)
        try:
            record = read_record(os.path.join(folder, "r"))
        except RecordError as e:
            assert os.path.join(folder, "r") in str(e), str(e)  # the message names the file
            return
        assert record.signal.ndim == 2 and record.signal.shape[1] == len(record.lead_names) >= 1
        assert record.signal.dtype == np.float32 and math.isfinite(record.fs) and record.fs > 0
        finite = record.signal[np.isfinite(record.signal)]
        assert finite.size == 0 or np.abs(finite).max() <= 32.768 + 1e-3
        assert sorted(os.listdir(folder)) == ["r.dat", "r.hea"]  # reading writes nothing


@_settings(FAST)
@given(mutation=mutations)
def test_fuzzed_wfdb_records_are_read_or_refused_naming_the_file(clean_record, mutation):
    _check_reader(clean_record, mutation)


@pytest.mark.slow
@_settings(MANY)
@given(mutation=mutations)
def test_fuzzed_wfdb_records_many(clean_record, mutation):
    _check_reader(clean_record, mutation)


# --- prompts, prompt files, rr_ms -----------------------------------------------------------------------------

numbers = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.text(max_size=6))
rr_values = st.one_of(st.none(), st.text(max_size=40),
                      st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-5000, 5000), st.text(max_size=5)),
                               max_size=30))


def _check_prompt(text, age, sex, hr, rr_ms) -> None:
    try:
        prompt = make_prompt(text, age=age, sex=sex, hr=hr, rr_ms=rr_ms)
    except PromptError as e:
        assert str(e).startswith("--"), str(e)  # names the field, as a flag
        return
    assert prompt.text.strip() and prompt.text.isprintable()
    assert prompt.sex in (None, "M", "F")
    for value in (prompt.age, prompt.hr, *(prompt.rr_ms or ())):
        assert value is None or math.isfinite(value)


@_settings(FAST)
@given(text=st.one_of(st.text(max_size=80), st.none(), st.integers()), age=numbers, sex=st.one_of(
    st.none(), st.sampled_from(["M", "F", "male", "Female", " ", "x"]), st.text(max_size=4)), hr=numbers,
    rr_ms=rr_values)
def test_fuzzed_prompts_are_accepted_or_refused_by_field(text, age, sex, hr, rr_ms):
    _check_prompt(text, age, sex, hr, rr_ms)


@pytest.mark.slow
@_settings(MANY)
@given(text=st.one_of(st.text(max_size=80), st.none()), age=numbers, sex=st.one_of(st.none(), st.text(max_size=4)),
       hr=numbers, rr_ms=rr_values)
def test_fuzzed_prompts_many(text, age, sex, hr, rr_ms):
    _check_prompt(text, age, sex, hr, rr_ms)


def _check_prompts_file(suffix: str, content: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "prompts" + suffix)
        with open(path, "w", encoding="utf-8", errors="replace") as f:
            f.write(content)
        try:
            prompts = read_prompts(path)
        except PromptError as e:
            assert "prompts" in str(e), str(e)  # names the file
            return
        assert prompts and all(p.text.strip() for p in prompts)


csv_cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
prompt_files = st.one_of(
    st.tuples(st.just(".csv"), st.lists(st.lists(csv_cells, min_size=1, max_size=6), max_size=6).map(
        lambda rows: "text,age,sex,hr,rr_ms\n" + "\n".join(",".join(r) for r in rows))),
    st.tuples(st.just(".jsonl"), st.lists(st.dictionaries(st.sampled_from(["text", "age", "sex", "hr", "rr_ms", "x"]),
                                                          st.one_of(csv_cells, st.floats(allow_nan=False),
                                                                    st.integers(-400, 4000), st.none())),
                                          max_size=5).map(lambda rows: "\n".join(json.dumps(r) for r in rows))),
    st.tuples(st.sampled_from([".csv", ".jsonl"]), st.text(max_size=200)),
)


@_settings(FAST)
@given(case=prompt_files)
def test_fuzzed_prompt_files_are_read_or_refused_naming_the_file(case):
    _check_prompts_file(*case)


@pytest.mark.slow
@_settings(MANY)
@given(case=prompt_files)
def test_fuzzed_prompt_files_many(case):
    _check_prompts_file(*case)


def _check_rr(rr, duration_s) -> None:
    try:
        plan = rhythm_from_rr(rr, duration_s)
    except RhythmError as e:
        assert "--rr_ms" in str(e), str(e)
        return
    peaks = np.array(plan.r_peaks_s)
    assert np.all(np.diff(peaks) > 0) and peaks[0] >= 0 and peaks[-1] <= duration_s


@_settings(FAST)
@given(rr=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40),
       duration_s=st.sampled_from([2.0, 10.0, 30.0]))
def test_fuzzed_rr_intervals_give_increasing_beats_or_are_refused(rr, duration_s):
    _check_rr(rr, duration_s)


@pytest.mark.slow
@_settings(MANY)
@given(rr=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40),
       duration_s=st.floats(0.5, 60))
def test_fuzzed_rr_intervals_many(rr, duration_s):
    _check_rr(rr, duration_s)


# --- a model folder's config.json ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_config() -> dict:
    from sediff_jax.generation import SHIPPED_CHECKPOINT

    return json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


def _paths(config, prefix=()):
    for key, value in config.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _paths(value, prefix + (key,))


def _check_model_config(config: dict, changes) -> None:
    config = copy.deepcopy(config)
    paths = sorted(_paths(config))
    for index, value, delete in changes:
        *parents, key = paths[index % len(paths)]
        target = config
        for p in parents:
            target = target.get(p) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        if delete:
            target.pop(key, None)
        else:
            target[key] = value
    try:
        validate_model_config(config, "model/config.json")
    except CheckpointError as e:
        assert "model/config.json" in str(e), str(e)


@_settings(FAST)
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), json_values, st.booleans()), min_size=1, max_size=4))
def test_fuzzed_model_configs_are_accepted_or_refused_naming_the_file(shipped_config, changes):
    _check_model_config(shipped_config, changes)


@pytest.mark.slow
@_settings(MANY)
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), json_values, st.booleans()), min_size=1, max_size=4))
def test_fuzzed_model_configs_many(shipped_config, changes):
    _check_model_config(shipped_config, changes)
