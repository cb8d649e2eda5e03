"""The TPU compile-only benchmark: the HLO all-reduce reader on its own, and the real steps compiled for a 4-chip
v5e slice where libtpu is installed (`make tpu-compile` installs it into .tpu-site)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks.tpu_report import allreduce_bytes, chip_info, roofline_seconds, weak_scaling


def test_allreduce_bytes_sums_every_all_reduce_result():
    hlo = "\n".join([
        "  %all-reduce.1 = (f32[]{:T(128)}, f32[32]{0:T(128)S(1)}, bf16[7,32,32]{2,1,0}) all-reduce(%a, %b, %c), "
        "channel_id=6, to_apply=%add",
        "  %all-reduce.2 = f32[4,8]{1,0} all-reduce(%d), replica_groups={{0,1}}",
        "  %x = f32[1000]{0} add(%e, %f)",  # not a collective
        "  %ars = (f32[16]{0}, f32[16]{0}) all-reduce-start(%g), channel_id=7",
    ])
    assert allreduce_bytes(hlo) == 4 + 4 * 32 + 2 * 7 * 32 * 32 + 4 * 32 + 2 * 4 * 16
    assert chip_info("TPU v5 lite")[:2] == (16, 200.0) and chip_info("TPU v5")[:2] == (95, 600.0)
    assert chip_info("H100") == (None, None, None, None)
    assert roofline_seconds(197e12, 1.0, 819.0, 197e12) == 1.0  # compute-bound
    assert roofline_seconds(1.0, 819e9, 819.0, 197e12) == 1.0  # bandwidth-bound


def test_weak_scaling_compares_the_smallest_and_largest_slice_of_one_chip():
    rows = [{"config": "c", "precision": "float32", "step": "vae", "per_chip_batch": 32, "device_kind": "TPU v5 lite",
             "chips": n, "samples_per_s_per_chip": rate} for n, rate in ((16, 1000.0), (256, 800.0))]
    assert weak_scaling(rows) == ["c vae (float32, TPU v5 lite, 32/chip): 16 -> 256 chips 80 %"]


def _tpu_site(repo_root: Path) -> Path | None:
    for site in (repo_root / ".tpu-site", *map(Path, sys.path)):
        if (site / "libtpu").is_dir():
            return site
    return None


@pytest.mark.slow  # minutes of compiling on a 2-core CPU; run where libtpu is installed
def test_tiny_steps_compile_for_a_v5e_slice(repo_root, tmp_path):
    """Both train steps compile for 4 v5e chips; the step's all-reduce carries at least the gradients (every
    parameter, float32) and the memory fits a v5e chip."""
    site = _tpu_site(repo_root)
    if site is None:
        pytest.skip("libtpu is not installed (make tpu-compile installs it into .tpu-site)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(repo_root)])}
    result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.tpu_compile", "--smoke",
                             f"--out={tmp_path / 'out'}"], cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "tpu_compile.json").read_text())["rows"]
    assert [(r["step"], r["chips"], r["device_kind"]) for r in rows] == [("vae", 4, "TPU v5 lite"),
                                                                       ("diffusion", 4, "TPU v5 lite")]
    import jax
    import numpy as np

    from experiments.configs import tiny
    from sediff_jax.training import stages
    from sediff_jax.training.config import resolve

    vae = stages.vae_model(resolve(tiny.get_config()), 0)
    gradient_bytes = sum(np.size(x) * 4 for x in jax.tree.leaves(vae.params))
    assert rows[0]["allreduce_mib"] * 2**20 >= gradient_bytes
    for r in rows:
        assert 0 < r["total_gib"] < 16 and r["gflop"] > 0 and r["roofline_s"] > 0
    assert "| tiny | float32 | v5e:2x2 | 4 | diffusion |" in (tmp_path / "out" / "tpu_compile.md").read_text()
