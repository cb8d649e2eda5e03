"""The TPU compile-only benchmark's table (no flags, so tests import it): chip facts, the all-reduce bytes of a
compiled HLO module, the Markdown report and its weak-scaling lines (`experiments.benchmarks.tpu_compile`)."""

from __future__ import annotations

import math
import re


# Per chip, by libtpu's device kind (vendor datasheets): HBM (GiB), ICI bandwidth (GB/s, all links), HBM
# bandwidth (GB/s), dense bf16 peak (FLOP/s).
CHIPS = {"TPU v4": (32, 300.0, 1228.0, 275e12), "TPU v5 lite": (16, 200.0, 819.0, 197e12),
         "TPU v5": (95, 600.0, 2765.0, 459e12), "TPU v6 lite": (32, 448.0, 1640.0, 918e12)}
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "pred": 1, "s8": 1, "u8": 1}


def allreduce_bytes(hlo_text: str) -> int:
    """Bytes of every all-reduce's results in a compiled HLO module (per chip, per call)."""
    total = 0
    for line in hlo_text.splitlines():
        if " all-reduce(" not in line and " all-reduce-start(" not in line:
            continue
        shapes = line.split("=", 1)[1].split("all-reduce", 1)[0]
        for dtype, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", shapes):
            if dtype in _DTYPE_BYTES:
                total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def chip_info(device_kind: str) -> tuple[float | None, float | None, float | None, float | None]:
    """(HBM GiB, ICI GB/s, HBM GB/s, bf16 peak FLOP/s) of a TPU device kind; Nones for one we do not know."""
    for name in sorted(CHIPS, key=len, reverse=True):  # ('TPU v5 lite' before 'TPU v5')
        if device_kind.startswith(name):
            return CHIPS[name]
    return None, None, None, None


def roofline_seconds(flops: float, bytes_accessed: float, hbm_gbs: float | None, peak_flops: float | None
                     ) -> float | None:
    """The larger of compute time at the bf16 peak and HBM traffic time: a lower bound on the step's time."""
    if not hbm_gbs or not peak_flops:
        return None
    return max(flops / peak_flops, bytes_accessed / (hbm_gbs * 1e9))


def markdown(header: dict, rows: list[dict]) -> str:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [f"TPU compile-only benchmark, {header['date']}: jax {header['jax']}, libtpu {header['libtpu']}, "
             f"compiled on {header['host']}. Every time and rate is an estimate (XLA's cost and memory analyses, "
             "ICI datasheet bandwidth), not a measurement.", "",
             "| config | precision | slice | chips | step | batch/chip | compile s | GiB/chip (arg + temp + out) | "
             "of HBM | GFLOP/step | GB accessed | roofline ms | all-reduce MiB (ms) | samples/s/chip (est.) | "
             "max batch/chip |", "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['slice']} | {r['chips']} | {r['step']} | {r['per_chip_batch']} | "
            f"{r['compile_s']:.0f} | {num(r['total_gib'], '.2f')} ({r['argument_gib']:.2f} + {r['temp_gib']:.2f} + "
            f"{r['output_gib']:.2f}) | {num(r['hbm_fraction'] and 100 * r['hbm_fraction'], '.1f')}% | "
            f"{r['gflop']:,.1f} | {r['gb_accessed']:.2f} | {num(r['roofline_s'] and 1e3 * r['roofline_s'], '.2f')} | "
            f"{r['allreduce_mib']:.1f} ({num(r['allreduce_s'] and 1e3 * r['allreduce_s'], '.3f')}) | "
            f"{num(r['samples_per_s_per_chip'], ',.0f')} | "
            f"{r.get('max_per_chip_batch', '')} |")
    scaling = weak_scaling(rows)
    if scaling:
        lines += ["", "Weak scaling (same config, step and batch per chip; estimated samples/s per chip on the "
                  "largest slice over the smallest of the same chip):", ""]
        lines += [f"- {s}" for s in scaling]
    return "\n".join(lines) + "\n"


def weak_scaling(rows: list[dict]) -> list[str]:
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["precision"], r["step"], r["per_chip_batch"], r["device_kind"]), []).append(r)
    for (config, precision, step, batch, kind), members in groups.items():
        members = sorted((m for m in members if m["samples_per_s_per_chip"]), key=lambda m: m["chips"])
        if len(members) >= 2 and members[0]["chips"] < members[-1]["chips"]:
            small, big = members[0], members[-1]
            out.append(f"{config} {step} ({precision}, {kind}, {batch}/chip): {small['chips']} -> {big['chips']} chips "
                       f"{100 * big['samples_per_s_per_chip'] / small['samples_per_s_per_chip']:.0f} %")
    return out
