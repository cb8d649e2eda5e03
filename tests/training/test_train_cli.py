"""experiments/train.py as users run it: SIGTERM saves and resumes; two processes over loopback (slow)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sediff_jax.checkpoints import stage as ckpt
from sediff_jax.training.metrics import read_metrics


def _env(num_devices: int) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
               PYTHONUNBUFFERED="1")
    return env


def _command(workdir, prepared_dir, *overrides):
    return [sys.executable, "-m", "experiments.train", "--config=experiments/configs/tiny.py",
            f"--workdir={workdir}", f"--config.data.prepared_dir={prepared_dir}", "--config.data.num_synthetic=48",
            "--config.vae.training.progress_bar=False", *overrides]


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(prepared_dir, tmp_path, repo_root):
    workdir = tmp_path / "run"
    args = ["--config.stage=vae", "--config.vae.training.num_steps=100000", "--config.vae.training.log_every=1",
            "--config.vae.training.eval_every=100000", "--config.vae.training.checkpoint_every=100000"]
    process = subprocess.Popen(_command(workdir, prepared_dir, *args), cwd=repo_root, env=_env(1),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "vae" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(read_metrics(str(metrics))) >= 3:
            break
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[0][-3000:]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopped at step" in output
    stopped = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    assert stopped["stopped_early"] and stopped["step"] >= 3
    saved = sorted(int(s) for s in os.listdir(workdir / "vae" / "checkpoints"))
    assert saved == [stopped["step"]]
    # Resuming from it is tested in-process (tests/training/test_train.py), bit for bit.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # CI time; runs in `make test-all`
def test_two_processes_over_loopback_match_one_process_with_two_devices(prepared_dir, tmp_path, repo_root):
    args = ["--config.stage=vae", "--config.vae.training.num_steps=3", "--config.vae.training.eval_every=3",
            "--config.vae.training.checkpoint_every=3"]
    port = _free_port()
    multi = tmp_path / "two_processes"
    # Each process reads its shard through a grain worker process; the one-process run reads with threads.
    processes = [subprocess.Popen(
        _command(multi, prepared_dir, *args) + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                                f"--process_id={i}", "--config.data.loader_workers=1"],
        cwd=repo_root, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 0 of 2, 2 devices (1 local)" in outputs[0]
    single = tmp_path / "one_process"
    run = subprocess.run(_command(single, prepared_dir, *args), cwd=repo_root, env=_env(2), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # The checkpoints were written by 2 devices; restore them onto one device of this process.
    import jax
    from jax.sharding import SingleDeviceSharding

    from experiments.configs import tiny
    from sediff_jax.training.stages import build_vae
    from sediff_jax.training.state import OptimizerConfig, abstract_like, init_state, make_optimizer, split_params

    _, params = split_params(build_vae(tiny.get_config(), 0))
    abstract = abstract_like(jax.eval_shape(lambda: init_state(params, make_optimizer(OptimizerConfig()), 0)),
                             SingleDeviceSharding(jax.devices()[0]))
    a, _, _, _ = ckpt.restore(str(multi / "vae"), abstract, step=3)
    b, _, _, _ = ckpt.restore(str(single / "vae"), abstract, step=3)
    assert len(jax.tree.leaves(a.ema_params)) == len(jax.tree.leaves(a.params)) > 0
    for x, y in zip(jax.tree.leaves((a.params, a.ema_params)), jax.tree.leaves((b.params, b.ema_params))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    ma = read_metrics(str(multi / "vae" / "metrics.jsonl"))
    mb = read_metrics(str(single / "vae" / "metrics.jsonl"))
    np.testing.assert_allclose([r["total"] for r in ma], [r["total"] for r in mb], rtol=1e-5)
