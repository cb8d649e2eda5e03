"""Generation prompts: a report text plus optional age, sex and heart rate, validated with messages that name the
field (or flag) and, for prompt files, the row."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Sequence

from sediff_jax.errors import SediffError

AGE_RANGE = (0.0, 120.0)  # years
HR_RR_TOLERANCE = 0.05  # hr and the rate of an RR list given together may differ by this fraction
HR_RANGE = (20.0, 300.0)  # bpm
SEXES = {"M": 0, "F": 1}
RR_RANGE_MS = (200.0, 3000.0)  # 300 to 20 bpm, beat to beat
FIELDS = ("text", "age", "sex", "hr", "rr_ms", "rhythm_from", "amplitudes_from")
MAX_TEXT_CHARS = 10_000  # a report far beyond any clinical statement (the text encoders read 128-256 tokens)


class PromptError(SediffError, ValueError):
    """A prompt that cannot be generated from; the message names the field and where it came from."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """text: the report (English).  age: years or None.  sex: 'M', 'F' or None.  hr: heart rate, bpm, or None.
    rr_ms: the RR intervals (ms) the ECG should beat with, or None (the rhythm comes from the text and hr).
    rhythm_from: a WFDB record (path or `pn://` PhysioNet name) whose R peaks the ECG follows, or None.
    amplitudes_from: a WFDB record whose lead amplitudes the ECG takes (`Generator.generate`), or None."""

    text: str
    age: float | None = None
    sex: str | None = None
    hr: float | None = None
    rr_ms: tuple[float, ...] | None = None
    rhythm_from: str | None = None
    amplitudes_from: str | None = None

    @property
    def sex_code(self) -> int:
        """0 male, 1 female, -1 unknown (the loader's coding)."""
        return SEXES.get(self.sex, -1) if self.sex is not None else -1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _number(value, name: str, where: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{where}{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PromptError(f"{where}{name} must be finite, got {value!r}")
    return number


def _rr_list(value, where: str) -> tuple[float, ...] | None:
    """RR intervals from a list or a string ('800,810 795' or '[800, 810]'), each checked; None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        items = [item for item in value.strip().strip("[]").replace(",", " ").split()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise PromptError(f"{where}rr_ms must be a list of RR intervals in ms, got {value!r}")
    rr = tuple(_number(item, "rr_ms", where) for item in items)
    if len(rr) < 1:
        raise PromptError(f"{where}rr_ms needs at least one RR interval (2 beats)")
    for k, x in enumerate(rr):
        if x is None or not RR_RANGE_MS[0] <= x <= RR_RANGE_MS[1]:
            raise PromptError(f"{where}rr_ms[{k}]={x} is outside {RR_RANGE_MS[0]:g}-{RR_RANGE_MS[1]:g} ms")
    return rr


def make_prompt(text, age=None, sex=None, hr=None, where: str = "--", rr_ms=None, rhythm_from=None,
                amplitudes_from=None) -> Prompt:
    """A validated Prompt. `where` prefixes the field name in errors ('--' for flags, 'prompts.csv row 3: ').
    rhythm_from and amplitudes_from are only named here; the records are read when the ECG is generated."""
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where}text must be a non-empty report, got {text!r}")
    age = _number(age, "age", where)
    if age is not None and not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise PromptError(f"{where}age={age:g} is outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g} years")
    hr = _number(hr, "hr", where)
    if hr is not None and not HR_RANGE[0] <= hr <= HR_RANGE[1]:
        raise PromptError(f"{where}hr={hr:g} is outside {HR_RANGE[0]:g}-{HR_RANGE[1]:g} bpm")
    if sex is not None and not (isinstance(sex, str) and sex.strip() == ""):
        code = str(sex).strip().upper()
        code = {"MALE": "M", "FEMALE": "F"}.get(code, code)
        if code not in SEXES:
            raise PromptError(f"{where}sex={sex!r} is unknown; expected M or F")
        sex = code
    else:
        sex = None
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())  # no control characters
    if not text:
        raise PromptError(f"{where}text must be a non-empty report (it holds only control characters)")
    if len(text) > MAX_TEXT_CHARS:
        raise PromptError(f"{where}text is {len(text)} characters long; a report may have at most "
                          f"{MAX_TEXT_CHARS}")
    rr = _rr_list(rr_ms, where)
    rhythm_from = _record_name(rhythm_from, "rhythm_from", where)
    amplitudes_from = _record_name(amplitudes_from, "amplitudes_from", where)
    if rhythm_from is not None and rr is not None:
        raise PromptError(f"{where}rr_ms and {where}rhythm_from both give the rhythm; give one")
    if rr is not None:
        rr_rate = 60000.0 / (sum(rr) / len(rr))
        if hr is None:  # the heart-rate token says what the RR list does
            hr = rr_rate
        elif abs(hr - rr_rate) > HR_RR_TOLERANCE * rr_rate:
            raise PromptError(f"{where}hr={hr:g} bpm disagrees with {where}rr_ms (mean RR "
                              f"{sum(rr) / len(rr):.0f} ms = {rr_rate:.0f} bpm) by more than "
                              f"{100 * HR_RR_TOLERANCE:g} %; give one of them, or make them agree")
    return Prompt(text, age, sex, hr, rr, rhythm_from, amplitudes_from)


def _record_name(value, name: str, where: str) -> str | None:
    """A record path (stripped) or None (also for an empty CSV cell)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise PromptError(f"{where}{name} must be a record path, got {value!r}")
    return os.fspath(value).strip()


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from a CSV (header with `text` and any of age, sex, hr, rr_ms, rhythm_from, amplitudes_from) or
    JSONL file (one object per line). rr_ms: RR intervals in ms, a JSON list or a string of numbers separated by
    spaces or commas. rhythm_from, amplitudes_from: WFDB records, relative to the file's folder unless absolute or
    `pn://...`."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")  # (a byte-order mark, as Excel writes, is dropped)
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"--prompts={path}: unreadable ({e})") from None
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise PromptError(f"--prompts={path} row {number}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise PromptError(f"--prompts={path} row {number}: expected a JSON object, got {type(row).__name__}")
            rows.append((number, row))
    else:
        reader = csv.DictReader(io.StringIO(raw, newline=""))  # (quoted fields may hold newlines)
        try:
            if reader.fieldnames is None or "text" not in [f.strip() for f in reader.fieldnames]:
                raise PromptError(f"--prompts={path}: the CSV needs a header with a 'text' column (and optionally "
                                  f"{', '.join(FIELDS[1:])}), got {reader.fieldnames}")
            for number, row in enumerate(reader, 2):  # row 1 is the header
                if None in row:
                    raise PromptError(f"--prompts={path} row {number}: more values than header columns")
                rows.append((number, {k.strip(): v for k, v in row.items()}))
        except csv.Error as e:
            raise PromptError(f"--prompts={path} line {reader.line_num}: not a readable CSV row ({e})") from None
    prompts = []
    for number, row in rows:
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise PromptError(f"--prompts={path} row {number}: unknown columns {unknown}; expected {list(FIELDS)}")
        records = {}
        for field in ("rhythm_from", "amplitudes_from"):
            record = row.get(field)
            if isinstance(record, str) and record.strip() and not (record.strip().startswith("pn://")
                                                                   or os.path.isabs(record.strip())):
                record = str(path.resolve().parent / record.strip())
            records[field] = record
        prompts.append(make_prompt(row.get("text"), row.get("age"), row.get("sex"), row.get("hr"),
                                   where=f"--prompts={path} row {number}: ", rr_ms=row.get("rr_ms"), **records))
    if not prompts:
        raise PromptError(f"--prompts={path}: no prompts in the file")
    return prompts


def with_rhythm_records(prompts: Sequence[Prompt], records: Sequence[str] | None, where: str = "records"
                        ) -> list[Prompt]:
    """The prompts, each following a record's R peaks (`rhythm_from`): one prompt once per record, one record for
    every prompt, or N prompts paired in order with N records. PromptError (naming `where`) for any other count,
    an empty entry, or prompts that give their own rhythm (rr_ms / rhythm_from)."""
    prompts = list(prompts)
    if records is None:
        return prompts
    records = [str(r).strip() for r in records]
    if not records:
        raise PromptError(f"{where} names no record")
    if any(not r for r in records):
        raise PromptError(f"{where}={','.join(records)} has an empty entry")
    if any(p.rr_ms is not None or p.rhythm_from is not None for p in prompts):
        raise PromptError(f"{where} and the prompts' rr_ms / rhythm_from both give the rhythm; pass one")
    if len(prompts) == 1:
        prompts = prompts * len(records)
    elif len(records) == 1:
        records = records * len(prompts)
    elif len(prompts) != len(records):
        raise PromptError(f"{where} names {len(records)} records for {len(prompts)} prompts; give one prompt "
                          "(generated once per record), one record (for every prompt) or as many prompts as "
                          "records (paired in order)")
    return [dataclasses.replace(p, rhythm_from=r) for p, r in zip(prompts, records)]
