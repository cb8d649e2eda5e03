"""Runs many invocations of one CLI in one interpreter (its imports and JAX start once), as a user would run each.

    python -m tests.experiments.cli_cases experiments.sample cases.json results.json WATCHED_DIR

cases.json: a list of argument lists. results.json: per case {"code", "stderr", "changed"}: the exit status, what
went to stderr, and whether anything under WATCHED_DIR was created, removed or modified by the case.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import traceback


def snapshot(root: str) -> dict[str, tuple[int, int]]:
    listing = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            listing[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return listing


def main() -> None:
    module_name, cases_path, results_path, watched = sys.argv[1:]
    from absl import flags

    from experiments import cli

    module = importlib.import_module(module_name)
    with open(cases_path) as f:
        cases = json.load(f)
    results = []
    for argv in cases:
        flags.FLAGS.unparse_flags()
        before = snapshot(watched)
        err = io.StringIO()
        code = 0
        sys.argv = [module_name, *argv]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.run(module.main)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported to the test as a traceback
                code = "exception"
                err.write(traceback.format_exc())
        results.append({"code": code, "stderr": err.getvalue(), "changed": snapshot(watched) != before})
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
