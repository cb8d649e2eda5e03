"""Experience reports per record (for training and evaluation) and per prompt (for sampling).

`build_reports` queries the index with every profile of a corpus (its own patient excluded; the index holds
only the training split, so validation and test records draw on training patients only) and distils each
neighbour set. `ExperienceTable` keeps the result as JSON lines, one record per line:
{"record_id", "split", "neighbours": [record ids], "scores": [...], "report"}.

For a free-text prompt, `codes_from_text` finds the corpus codes whose English description (or the code itself,
as a whole word) occurs in the text, which makes the prompt a query profile.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from sediff_jax.experience.profiles import ProfileCorpus, ProfileError, corpus_summary
from sediff_jax.experience.retrieval import ExperienceIndex, Neighbours
from sediff_jax.io import jsonio
from sediff_jax.io.atomic import atomic_path


def build_reports(corpus: ProfileCorpus, index: ExperienceIndex, distiller,
                  progress=None) -> list[dict]:
    """One entry per corpus profile (all splits), in corpus order; `progress(n)` after each."""
    out = []
    for i in range(len(corpus)):
        profile = corpus.profile(i)
        found = index.query_profile(profile)
        out.append({"record_id": profile.record_id, "split": profile.split,
                    "neighbours": index.corpus.record_ids[found.rows].tolist(),
                    "scores": [round(float(s), 6) for s in found.scores],
                    "report": distiller.distill(index.corpus, found.rows)})
        if progress is not None:
            progress(1)
    return out


class ExperienceTable:
    """record_id -> experience report ('' when a record has no neighbours)."""

    def __init__(self, entries: Iterable[Mapping]):
        self.entries = {str(e["record_id"]): dict(e) for e in entries}

    def __len__(self) -> int:
        return len(self.entries)

    def report(self, record_id: str) -> str:
        entry = self.entries.get(record_id)
        return entry["report"] if entry else ""

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path, suffix=".jsonl") as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for entry in self.entries.values():
                    f.write(jsonio.dumps(entry, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperienceTable":
        """Read `save`'s JSON lines; ProfileError names the file and line of anything unreadable."""
        path = Path(path)
        if not path.exists():
            raise ProfileError(f"{path}: experience table not found (build it with experiments/build_experience.py)")
        entries = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    if not isinstance(entry.get("record_id"), str) or not isinstance(entry.get("report"), str):
                        raise ValueError("needs string 'record_id' and 'report'")
                except (ValueError, AttributeError) as e:
                    raise ProfileError(f"{path}:{line_no}: unreadable experience entry ({e})") from None
                entries.append(entry)
        return cls(entries)


EXPERIENCE_FILES = ("profiles.npz", "experience.jsonl", "manifest.json")


def save_experience(out_dir: str | os.PathLike, corpus: ProfileCorpus, index: ExperienceIndex,
                    entries: list[Mapping], **manifest: object) -> Path:
    """Write an experience directory: profiles.npz, experience.jsonl, then manifest.json (each atomically, the
    manifest last, so a directory with a manifest is complete). `manifest` adds fields (dataset, distiller, ...)
    to the retrieval config and counts. This is what training's `experience.dir` reads."""
    import dataclasses

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus.save(out / "profiles.npz")
    ExperienceTable(entries).save(out / "experience.jsonl")
    content = {"format": "sediff_jax.experience",
               "retrieval": {**dataclasses.asdict(index.config), "weights": dict(index.config.weights)},
               "corpus": corpus_summary(corpus), "index_profiles": len(index),
               "records_with_report": sum(bool(e["report"]) for e in entries), **manifest}
    jsonio.write_json(out / "manifest.json", content, indent=2)
    return out


def codes_from_text(text: str, corpus: ProfileCorpus) -> dict[str, tuple[str, ...]]:
    """view -> corpus codes named in `text`: by description (case-insensitive, whole words) or by code."""
    lowered = " ".join(text.lower().split())
    out = {}
    for view, sets in corpus.codes.items():
        found = []
        for code in sets.vocab:
            description = corpus.descriptions.get(code, "").lower()
            if description and re.search(rf"(?<![\w-]){re.escape(description)}(?![\w-])", lowered):
                found.append(code)
            elif re.search(rf"(?<![\w-]){re.escape(code)}(?![\w-])", text):
                found.append(code)
        out[view] = tuple(found)
    return out


class PromptExperience:
    """Experience for prompts at sampling time: query the index with the prompt's codes, distil."""

    def __init__(self, index: ExperienceIndex, distiller):
        self.index, self.distiller = index, distiller

    def neighbours(self, text: str, age: float | None = None, sex: int | None = None) -> Neighbours:
        """The corpus profiles retrieved for a prompt text and patient (age in years, sex as SEX_CODES; None:
        unknown); none when nothing in the text matches the corpus."""
        codes = codes_from_text(text, self.index.corpus)
        if not any(codes.values()):
            return Neighbours(np.zeros(0, np.int64), np.zeros(0))
        return self.index.query(codes, age=age, sex=sex)

    def report(self, text: str, age: float | None = None, sex: int | None = None) -> tuple[str, list[str]]:
        """(report, neighbour record ids) of `neighbours`; ('', []) when nothing in the text matches the corpus."""
        found = self.neighbours(text, age, sex)
        if not len(found.rows):
            return "", []
        return self.distiller.distill(self.index.corpus, found.rows), \
            np.asarray(self.index.corpus.record_ids)[found.rows].tolist()
