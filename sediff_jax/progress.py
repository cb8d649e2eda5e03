"""Progress of long work: a tqdm bar on a terminal; otherwise (output redirected to a file or a pipe) a plain line
on stderr at every tenth of the work and at least once a minute, so that logs show a run is alive and how far it
is.

    with Progress(total, "ddim-50", unit="step") as progress:
        ... progress.update(n) ...
"""

from __future__ import annotations

import sys
import time


class Progress:
    """total / initial: units of work in all / already done (a resumed run).  lines: plain lines over the whole
    work.  every_s: at most this long between plain lines.  stream: default stderr."""

    def __init__(self, total: int, desc: str, unit: str = "item", lines: int = 10, every_s: float = 60.0,
                 stream=None, initial: int = 0):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = int(initial)
        self._start = self._last = time.perf_counter()
        self._step = max(1, -(-self.total // max(1, lines)))
        self._next = (self.done // self._step + 1) * self._step
        self._every_s = every_s
        self._postfix = ""
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True)

    def set_postfix(self, **values) -> None:
        """Values shown after the count (e.g. loss=0.12)."""
        if self._bar is not None:
            self._bar.set_postfix(**values)
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.done >= self._next or now - self._last >= self._every_s or self.done == self.total:
            while self._next <= self.done:
                self._next += self._step
            self._last = now
            extra = f", {self._postfix}" if self._postfix else ""
            print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(1, self.total):.0f} %, "
                  f"{now - self._start:.0f} s{extra})", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
