"""PTB-XL (Wagner et al. 2020): `ptbxl_database.csv`, `scp_statements.csv`, `records100/`, `records500/`.

Splits follow the dataset's recommendation: `strat_fold` 1-8 train, 9 validation, 10 test. The English text
is built from `scp_codes` and the statements' English descriptions (the `report` column, German for many
records, is kept as `original_text`).
"""

from __future__ import annotations

import ast
import os

from sediff_jax.data.sources import LayoutError, RecordEntry, parse_age, parse_sex, read_csv, sentences_to_text

SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
DATABASE_COLUMNS = (
    "ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", "filename_lr", "filename_hr",
)
STATEMENT_COLUMNS = ("description", "diagnostic", "diagnostic_class")
SAMPLING_RATES = {100: "filename_lr", 500: "filename_hr"}


def fold_to_split(fold: int) -> str:
    if 1 <= fold <= 8:
        return "train"
    if fold == 9:
        return "validation"
    if fold == 10:
        return "test"
    raise ValueError(f"strat_fold must be 1..10, got {fold}")


def read_statements(path: str) -> dict[str, dict[str, str]]:
    """scp_statements.csv as {code: row}; the code is the unnamed first column."""
    rows = read_csv(path, STATEMENT_COLUMNS)
    key = next(iter(rows[0])) if rows else ""
    return {row[key].strip(): row for row in rows}


def _qualified(description: str, likelihood: float) -> str:
    """PTB-XL likelihoods: 100 certain, 0 not stated (rhythm/form statements), otherwise 15..80."""
    if likelihood <= 0 or likelihood >= 100:
        return description
    return ("probable " if likelihood >= 50 else "possible ") + description


def scp_text(scp_codes: dict[str, float], statements: dict[str, dict[str, str]], where: str = "") -> str:
    """English report from `scp_codes` ({code: likelihood}): rhythm first, then the rest, most likely first."""
    unknown = [c for c in scp_codes if c not in statements]
    if unknown:
        raise LayoutError(f"{where}: scp code(s) {', '.join(unknown)} not in scp_statements.csv")
    is_rhythm = lambda c: statements[c].get("rhythm", "").strip() in {"1", "1.0"}  # noqa: E731
    order = sorted(scp_codes, key=lambda c: (not is_rhythm(c), -float(scp_codes[c])))
    return sentences_to_text(_qualified(statements[c]["description"], float(scp_codes[c])) for c in order)


LABELS_CHANGED_FILE = "labels_changed_in_v1.0.3.txt"


def labels_changed(source_dir: str) -> set[int]:
    """ecg_ids whose v1.0.1 `scp_codes` give other superclasses than v1.0.3 (one per line in the layout's
    LABELS_CHANGED_FILE, when it has one; the offline full set does)."""
    path = os.path.join(source_dir, LABELS_CHANGED_FILE)
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        try:
            return {int(line) for line in (raw.split("#")[0].strip() for raw in f) if line}
        except ValueError as e:
            raise LayoutError(f"{path}: not a list of ecg_ids ({e})") from None


def read_ptbxl(source_dir: str, fs: int = 500) -> list[RecordEntry]:
    """Entries for every row of `ptbxl_database.csv`, pointing at the `fs` Hz waveforms (100 or 500)."""
    if fs not in SAMPLING_RATES:
        raise ValueError(f"PTB-XL has records at 100 and 500 Hz, not {fs}")
    database = os.path.join(source_dir, "ptbxl_database.csv")
    rows = read_csv(database, DATABASE_COLUMNS)
    changed = labels_changed(source_dir)
    statements = read_statements(os.path.join(source_dir, "scp_statements.csv"))
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{database}:{line}"
        try:
            ecg_id = int(float(row["ecg_id"]))
            codes = ast.literal_eval(row["scp_codes"]) if row["scp_codes"].strip() else {}
            fold = int(float(row["strat_fold"]))
            split = fold_to_split(fold)
        except (ValueError, SyntaxError) as e:
            raise LayoutError(f"{where}: {e}") from None
        if not isinstance(codes, dict):
            raise LayoutError(f"{where}: scp_codes is not a dict: {row['scp_codes']!r}")
        superclasses = {
            statements[c]["diagnostic_class"].strip()
            for c in codes
            if c in statements and statements[c]["diagnostic"].strip() in {"1", "1.0"}
        }
        patient = row["patient_id"].strip()
        entries.append(
            RecordEntry(
                record_id=f"ptbxl/{ecg_id:05d}",
                patient_id=f"ptbxl/{int(float(patient))}" if patient else f"ptbxl/unknown-{ecg_id}",
                path=os.path.join(source_dir, row[SAMPLING_RATES[fs]].strip()),
                fs=float(fs),
                split=split,
                age=parse_age(row["age"], where),
                sex=parse_sex(row["sex"], where),
                text=scp_text(codes, statements, where),
                original_text=row["report"].strip(),
                codes=tuple(codes),
                superclasses=tuple(s for s in SUPERCLASSES if s in superclasses),
                measurements={},
                labels_changed=ecg_id in changed,
            )
        )
    return entries
