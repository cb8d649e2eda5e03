"""What every benchmark shares: "compile, then time" of a call, and the Markdown table it prints. No flags here."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Timing:
    """first_s: the first call (compilation plus one run), s.  seconds: mean wall time of each later call, s.
    result: what the last call returned.  compile_s: first_s - seconds, the compilation's estimate."""

    first_s: float
    seconds: float
    result: Any

    @property
    def compile_s(self) -> float:
        return max(self.first_s - self.seconds, 0.0)


def _ready(value):
    import jax

    return jax.block_until_ready(value)


def compile_and_time(call: Callable[[], Any], repeats: int = 1, first: Callable[[], Any] | None = None) -> Timing:
    """Call `first` (default: `call`) once and wait for its arrays, then call `call` `repeats` times back to back
    (JAX dispatches them asynchronously, as a training loop does) and wait for the last result. `first` lets the
    compiling call use other inputs (e.g. another seed) than the timed ones."""
    start = time.perf_counter()
    _ready((first or call)())
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    result = None
    for _ in range(repeats):
        result = call()
    _ready(result)
    return Timing(first_s, (time.perf_counter() - start) / repeats if repeats else float("nan"), result)


def best_time(call: Callable[[], Any], repeats: int) -> float:
    """The shortest of `repeats` calls (s), each waited for: the machine's least disturbed run."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _ready(call())
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
                   ) -> str:
    """A Markdown table: `header` names, `rows` of already formatted cells; numeric columns right-aligned."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
                numeric: Sequence[bool] | None = None, notes: str = "") -> str:
    """Print (and return) a benchmark's result: a title line, the table, notes."""
    text = f"\n{title}\n\n{markdown_table(header, rows, numeric)}\n" + (f"\n{notes}\n" if notes else "")
    print(text, flush=True)
    return text
