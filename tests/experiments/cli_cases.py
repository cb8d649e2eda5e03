"""Runs many invocations of several CLIs in one interpreter (imports and JAX start once), as a user runs each.

    python -m tests.experiments.cli_cases cases.json results.json WATCHED_DIR

cases.json: {"experiments.sample": [argument lists], ...}. results.json: the same keys, per case {"code",
"stderr", "changed"}: the exit status, what went to stderr, and whether anything under WATCHED_DIR was created,
removed or modified by the case. Each module's absl flags are removed before the next module is imported (the
CLIs define flags of the same names).
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


def run_module(module_name: str, cases: list[list[str]], watched: str) -> list[dict]:
    from absl import flags

    from experiments import cli

    module = importlib.import_module(module_name)
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
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # (ml_collections defines these per parse)
            delattr(flags.FLAGS, name)
    for flag in list(flags.FLAGS.flags_by_module_dict().get(module_name, [])):
        if flag.name in flags.FLAGS:
            delattr(flags.FLAGS, flag.name)
    return results


def main() -> None:
    cases_path, results_path, watched = sys.argv[1:]
    with open(cases_path) as f:
        cases = json.load(f)
    results = {name: run_module(name, module_cases, watched) for name, module_cases in cases.items()}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
