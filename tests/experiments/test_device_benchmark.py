"""The device benchmark's own arithmetic (the full --smoke run is `make bench-device-smoke`, run by CI): device
peaks, XLA's FLOP count of a known matmul, the report files."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments.benchmarks.device_report import Report, cost_flops, memory_bytes, peak_flops


def test_peaks_by_device_kind():
    assert peak_flops("NVIDIA H200") == (989e12, 67e12)
    assert peak_flops("TPU v5 lite")[0] == 197e12
    assert peak_flops("cpu") == (None, None)


def test_xla_cost_analysis_counts_a_matmul():
    a = jnp.ones((64, 32), jnp.float32)
    b = jnp.ones((32, 16), jnp.float32)
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    assert cost_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.05)
    assert memory_bytes(compiled) >= 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_report_writes_markdown_and_json_after_each_row(tmp_path):
    header = {"device": "NVIDIA H200", "platform": "gpu", "devices": 1, "jax": "0.11.2", "date": "2026-12-01",
              "smoke": False, "peak_bf16": 989e12, "peak_fp32": 67e12, "budget_s": 450.0, "start": 0.0}
    from sediff_jax.io.outputs import output_dir

    report = Report(output_dir(tmp_path, tool="the device benchmark", overwrite=True), header)
    row = {"config": "ptbxl100", "precision": "bfloat16", "step": "diffusion full", "batch": 256, "compile_s": 30.0,
           "ms_per_step": 20.0, "samples_per_s": 12800.0, "x_ddpm": 1.2, "gflop_per_step": 500.0,
           "tflop_per_s": 25.0, "mfu_bf16": 25e12 / 989e12, "mfu_fp32": None, "memory_gib": 3.5}
    report.add("train_step", row)
    report.skipped.append("pod/float32/VAE")
    report.write()
    text = (tmp_path / "device_benchmark.md").read_text()
    assert "| ptbxl100 | bfloat16 | diffusion full | 256 | 30.0 | 20.00 | 12,800 | 1.20 | 500.0 | 25.00 | 2.5% |  | 3.50 |" in text
    assert "Skipped (past the 450 s budget): pod/float32/VAE" in text
    saved = json.loads((tmp_path / "device_benchmark.json").read_text())
    assert saved["train_step"][0]["mfu_fp32"] is None and saved["device"] == "NVIDIA H200"
