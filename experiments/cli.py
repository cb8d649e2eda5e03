"""What every entrypoint in experiments/ shares: user errors as one line with exit status 2, checked flags, and
quiet logs.

    from experiments import cli
    ...
    if __name__ == "__main__":
        cli.run(main)

* A bad flag (absl parsing or a registered validator), `app.UsageError` and any of our own errors
  (`sediff_jax.errors.SediffError`: `cli.UsageError`, `OutputError`, `CheckpointError`, `PromptError`,
  `PriorError`, `ProfileError`, `LayoutError`, `RecordError`, ...) print `error: <message>` on stderr and exit
  with status 2: no traceback, no usage dump. Anything else is a bug: its traceback, a line saying so, status 1.
* Logs keep our own messages and every warning; INFO lines of the libraries underneath (JAX's backend probing,
  Orbax, TFDS) are dropped unless `--verbosity` / `-v` is given.
"""

from __future__ import annotations

import logging as py_logging
import math
import sys
import traceback
from typing import Any, Callable

from absl import app, flags, logging

from sediff_jax.errors import SediffError
from sediff_jax.io.outputs import OutputError, release_all_folders  # noqa: F401  (OutputError: re-exported)
from sediff_jax.progress import Progress  # noqa: F401  (the CLIs' progress lines)

FLAGS = flags.FLAGS


class UsageError(SediffError):
    """Bad flags or inputs: printed as one line, exit status 2."""


USER_ERRORS = (SediffError, app.UsageError)  # (OutputError, CheckpointError, PromptError, ... are SediffErrors)
BUG_HINT = ("This is a bug in sediff_jax, not a problem with your input: please report it with the command and "
            "the traceback above.")


def fail(message: str) -> None:
    """Print `error: message` and exit with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


class _OurInfoOnly(py_logging.Filter):
    """Passes warnings and errors from anywhere, INFO and below only from sediff_jax and experiments."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        if "/tensorflow_datasets/" in path and "custom data configuration" in str(record.msg):
            return False  # (a warning TFDS gives every builder config of ours; nothing is wrong)
        if record.levelno >= py_logging.WARNING:
            return True
        return "/sediff_jax/" in path or "/experiments/" in path


def quiet_library_logs() -> None:
    """Drop the libraries' INFO lines unless the user asked for verbosity."""
    if FLAGS["verbosity"].present:
        return
    logging.get_absl_handler().addFilter(_OurInfoOnly())
    for name in ("jax", "orbax", "absl", "tensorflow_datasets", "etils"):
        py_logging.getLogger(name).addFilter(_OurInfoOnly())


HELP_FLAGS = ("help", "h", "?", "helpshort", "helpfull", "helpxml")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors are one line and exit status 2; help (`--help`, `--helpfull`, ...) exits 0
    (absl's own exits 1, as if it were an error)."""
    try:
        return FLAGS(argv)
    except (flags.Error, OSError, ImportError, SyntaxError) as e:  # (the last three: a --config file)
        fail("; ".join(line.strip() for line in str(e).splitlines() if line.strip()))
    except SystemExit as e:
        asked = any(a.startswith("-") and a.lstrip("-").split("=")[0] in HELP_FLAGS for a in argv[1:])
        if asked and e.code == 1:
            sys.exit(0)
        raise


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` with one-line user errors (USER_ERRORS: exit 2) and quiet library logs."""

    def wrapped(argv):
        quiet_library_logs()
        if len(argv) > 1:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            return main(argv)
        except USER_ERRORS as e:
            fail(str(e))
        except Exception:  # noqa: BLE001 - a bug: its traceback, and a line saying so
            traceback.print_exc()
            print(BUG_HINT, file=sys.stderr, flush=True)
            sys.exit(1)
        finally:
            release_all_folders()  # (the run is over: its output folders' writer locks go)

    app.run(wrapped, flags_parser=parse_flags)


# -- flag checks: registered at import, so they run while flags are parsed, before any work ----------------------

def check_float(name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, allow_inf: bool = False) -> None:
    """Register a check that float flag `name` is finite (or +inf with `allow_inf`) and within [low, high]
    (open ends with low_open / high_open); None (unset) passes."""

    def ok(value) -> bool:
        if value is None:
            return True
        if value != value:  # NaN
            return False
        if not (math.isfinite(value) or (allow_inf and value == math.inf)):
            return False
        if low is not None and (value < low or (low_open and value == low)):
            return False
        return not (high is not None and (value > high or (high_open and value == high)))

    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    flags.register_validator(name, ok, message=f"--{name} must be a finite number{where}"
                                                + (" (or inf)" if allow_inf else ""))


def check_int(name: str, low: int | None = None, high: int | None = None) -> None:
    """Register a check that integer flag `name` is within [low, high]; None (unset) passes."""

    def ok(value) -> bool:
        return value is None or ((low is None or value >= low) and (high is None or value <= high))

    where = " and ".join(s for s in ((f">= {low}" if low is not None else ""),
                                     (f"<= {high}" if high is not None else "")) if s)
    flags.register_validator(name, ok, message=f"--{name} must be {where}")


MAX_SEED = 2**32 - 1  # (JAX keys take 32-bit seeds without x64: 2**32 would give seed 0's ECGs)


def check_sampling_flags() -> None:
    """The checks of the sampling flags the generating CLIs share: --steps, --guidance_scale, --eta, --seed."""
    check_int("steps", 1)
    check_float("guidance_scale", 0)
    check_float("eta", 0, 1)
    check_int("seed", 0, MAX_SEED)



def define_variety_flags() -> None:
    """The sampling options that keep variety (diffusion.sampling's module docstring), for the generating CLIs
    (defined once per process: several CLIs may be imported together, as the bad-input tests do)."""
    if "guidance_interval" in FLAGS:
        return
    flags.DEFINE_list("guidance_interval", None, "Guide only at noise levels sigma in (LOW, HIGH], e.g. 0.3,5 "
                      "(Kynkaanniemi et al. 2024); elsewhere the conditional model. Default: every step.")
    flags.DEFINE_list("group_guidance", None, "Guidance scales per condition group TEXT,EXPERIENCE,METADATA on a "
                      "nested chain (replaces --guidance_scale; 4 model calls per step).")
    flags.DEFINE_float("cads_noise", 0.0, "Condition-annealed sampling (CADS, Sadat et al. 2024): noise scale of "
                       "the text and experience tokens at high noise (0: off; 0.1-0.25 typical).")
    flags.DEFINE_list("cads_tau", ["0.6", "0.9"], "CADS TAU1,TAU2: the condition is intact below TAU1 and pure "
                      "noise above TAU2 (fractions of the schedule).")
    flags.DEFINE_bool("exact_limb_leads", True, "Project each generated ECG's limb leads onto the space where "
                      "Einthoven's and Goldberger's laws hold exactly (least squares; chest leads unchanged).")
    flags.DEFINE_enum("lead_amplitudes", "auto", ["model", "retrieved", "auto"], "Where each lead's amplitude "
                      "comes from: 'model' (as the denoiser draws it), 'retrieved' (rescaled to the peak-to-peak "
                      "amplitudes of one real patient drawn from the prompt's retrieved neighbours) or 'auto' "
                      "(retrieved where the model's corpus has amplitudes and --experience is not off).")
    flags.DEFINE_float("amplitude_strength", 0.75, "Where lead amplitudes are retrieved: how far each lead's "
                       "amplitude moves from the model's a to the retrieved patient's b, to a^(1-S) b^S (1: all "
                       "the way; 0.75 was chosen on PTB-XL's validation fold).")
    flags.register_validator("amplitude_strength", lambda v: 0 <= v <= 1,
                             message="--amplitude_strength must be in [0, 1]")
    flags.register_validator("cads_noise", lambda v: math.isfinite(v) and v >= 0,
                             message="--cads_noise must be a finite number >= 0")


def _floats(name: str, values: list[str] | None, count: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        parsed = tuple(float(v) for v in values)
    except ValueError:
        raise UsageError(f"--{name}={','.join(values)}: expected {count} numbers separated by commas") from None
    if len(parsed) != count:
        raise UsageError(f"--{name}={','.join(values)}: expected {count} numbers, got {len(parsed)}")
    return parsed


def variety_options() -> dict[str, Any]:
    """SamplerConfig keyword arguments from the flags of `define_variety_flags` (UsageError naming a bad one)."""
    return {"guidance_interval": _floats("guidance_interval", FLAGS.guidance_interval, 2),
            "group_scales": _floats("group_guidance", FLAGS.group_guidance, 3),
            "cads_noise": FLAGS.cads_noise, "cads_tau": _floats("cads_tau", FLAGS.cads_tau, 2),
            "exact_limb_leads": FLAGS.exact_limb_leads, "lead_amplitudes": FLAGS.lead_amplitudes,
            "amplitude_strength": FLAGS.amplitude_strength}


def check_config_names(name: str) -> None:
    """Register a check that flag `name` (a list, or one name) names configs of experiments/configs."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent / "configs"
    known = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")

    def ok(values) -> bool:
        return values is None or all(v in known for v in ([values] if isinstance(values, str) else values))

    flags.register_validator(name, ok, message=f"--{name} must name configs of experiments/configs: "
                             f"{', '.join(known)}")


def check_positive_ints(name: str, low: int = 1) -> None:
    """Register a check that list flag `name` holds integers >= `low` (>= 0 at most low)."""

    def ok(values) -> bool:
        return values is None or all(v.strip().isdigit() and int(v) >= low for v in values)

    flags.register_validator(name, ok, message=f"--{name} must be integers >= {low} separated by commas")


def provenance() -> dict[str, str]:
    """What every result file records about the run that wrote it: UTC time, the command line, Python, and the
    code's git commit ('unknown' outside a checkout)."""
    import datetime
    import os
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "python": platform.python_version(),
            "git_commit": commit}


def publish(out, json_files: dict[str, Any], text_files: dict[str, str]) -> None:
    """Replace this tool's earlier outputs in `out` (an `io.outputs.OutputDir`) by `json_files` (name -> strict
    JSON value) and `text_files` (name -> text), each written atomically and entered in the folder's record."""
    from sediff_jax.io import atomic_path, jsonio

    out.mkdir()
    out.clear()
    with out.writing(*json_files, *text_files):
        for name, value in json_files.items():
            jsonio.write_json(out.path / name, value)
        for name, text in text_files.items():
            with atomic_path(out.path / name) as tmp:
                tmp.write_text(text, encoding="utf-8")



def load_model(path: str, which: str = "best"):
    """`sediff_jax.generation.load_model`, announced by one line on stderr (a load takes a second or more, and
    nothing else would be printed meanwhile)."""
    from sediff_jax.generation import load_model as load

    print(f"loading model {path} ...", file=sys.stderr, flush=True)
    return load(path, which)
