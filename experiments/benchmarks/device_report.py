"""The device benchmark's report (no flags, so tests import it): device peaks, XLA's FLOP and memory figures of a
compiled step, and the Markdown + JSON files rewritten after every row (`experiments.benchmarks.device`)."""

from __future__ import annotations

import os
import time

# Dense peak FLOP/s per device (vendor datasheets): (bfloat16, float32 without tensor cores).
PEAK_FLOPS = {"H200": (989e12, 67e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12), "L4": (121e12, 30e12),
              "TPU v4": (275e12, None), "TPU v5 lite": (197e12, None), "TPU v5p": (459e12, None),
              "TPU v6 lite": (918e12, None)}
def peak_flops(device_kind: str) -> tuple[float | None, float | None]:
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peaks
    return None, None


def cost_flops(compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (per device), or None where the backend gives none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning nothing
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def memory_bytes(compiled) -> int | None:
    """XLA's footprint of one call: arguments + outputs + temporaries - donated aliases (per device)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001
        return None


class Report:
    """Rows of each section, rewritten (atomically) to the out folder after every row."""

    def __init__(self, out, header: dict):
        """out: the io.outputs.OutputDir the report is written to (its files are entered in its record)."""
        self.out, self.out_dir, self.header = out, str(out.path), header
        self.sections: dict[str, list[dict]] = {"train_step": [], "sampling": [], "simulator": []}
        self.skipped: list[str] = []

    def add(self, section: str, row: dict) -> None:
        self.sections[section].append(row)
        self.write()

    def write(self) -> None:
        from sediff_jax.io import atomic_path, jsonio

        with self.out.writing("device_benchmark.json", "device_benchmark.md"):
            jsonio.write_json(os.path.join(self.out_dir, "device_benchmark.json"),
                              {**self.header, **self.sections, "skipped": self.skipped})
            with atomic_path(os.path.join(self.out_dir, "device_benchmark.md")) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(self.markdown())

    def markdown(self) -> str:
        h = self.header
        lines = [f"Device benchmark: {h['device']} x{h['devices']}, jax {h['jax']}, {h['date']}"
                 f"{' (smoke)' if h['smoke'] else ''}; peaks bf16 {_tflops(h['peak_bf16'])} / fp32 "
                 f"{_tflops(h['peak_fp32'])} TFLOP/s per device", ""]
        if self.sections["train_step"]:
            lines += ["| config | precision | step | batch | compile s | ms/step | samples/s | x DDPM | GFLOP/step | "
                      "TFLOP/s | MFU bf16 | MFU fp32 | memory GiB |", "|" + "---|" * 13]
            for r in self.sections["train_step"]:
                lines.append(f"| {r['config']} | {r['precision']} | {r['step']} | {r['batch']} | {r['compile_s']:.1f} "
                             f"| {r['ms_per_step']:.2f} | {r['samples_per_s']:,.0f} | {_num(r['x_ddpm'], '.2f')} | "
                             f"{_num(r['gflop_per_step'], ',.1f')} | {_num(r['tflop_per_s'], '.2f')} | "
                             f"{_pct(r['mfu_bf16'])} | {_pct(r['mfu_fp32'])} | {_num(r['memory_gib'], '.2f')} |")
            lines += ["", "FLOPs: XLA's cost analysis per device; it counts a while-loop body once, so rows with a "
                      "diffrax solve (sim, full) under-count FLOPs and MFU. samples/s is global (all devices).", ""]
        for section, unit in (("sampling", "ECGs/s"), ("simulator", "records/s")):
            if self.sections[section]:
                lines += [f"| {section} | batch | compile s | s/call | {unit} |", "|---|---|---|---|---|"]
                for r in self.sections[section]:
                    lines.append(f"| {r['what']} | {r['batch']} | {r['compile_s']:.1f} | {r['seconds']:.3f} | "
                                 f"{r['rate']:,.1f} |")
                lines.append("")
        if self.skipped:
            lines += [f"Skipped (past the {h['budget_s']:g} s budget): {', '.join(self.skipped)}", ""]
        peak = h.get("peak_device_memory_gib")
        lines.append(f"Total wall time {time.time() - h['start']:.0f} s."
                     + (f" Peak device memory over the run: {peak:.1f} GiB." if peak is not None else ""))
        return "\n".join(lines) + "\n"


def _tflops(v):
    return "n/a" if v is None else f"{v / 1e12:g}"


def _num(v, fmt):
    return "" if v is None else format(v, fmt)


def _pct(v):
    return "" if v is None else f"{100 * v:.1f}%"
