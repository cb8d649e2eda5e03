"""A training stage's evaluators (as big_vision's `evaluators/`): each is called with the train state and the step
at every evaluation step (`training.eval_every`) and returns named values. A float is a metric (metrics.jsonl and
TensorBoard, `validation/<name>`); a (height, width, 3) uint8 array is an image (TensorBoard only). A stage's
builder (`training.stage_runs`) picks them; the loop runs whichever it is given.

- `MeanOverRecords`: a loss averaged over records, from per-batch sums (both stages' validation and test loss).
- `SampleWriter`: stage 2's generated ECGs beside the real ones they take their conditions from, written as
  `samples/step_<N>.npz` and `.png` under the stage directory and shown in TensorBoard (`validation/samples`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sediff_jax.io.atomic import atomic_path
from sediff_jax.io.npz import write_npz
from sediff_jax.leads import lead_index
from sediff_jax.training.sources import eval_loader
from sediff_jax.training.state import TrainState

Value = float | np.ndarray


class Evaluator(Protocol):
    def __call__(self, state: TrainState, step: int) -> Mapping[str, Value]: ...


@dataclasses.dataclass(frozen=True)
class MeanOverRecords:
    """The mean over the records of one ordered pass of `source` (at most `max_batches` batches; None: all).

    batch_sums(ema_params, batch_index, host_batch) -> (values, count): device scalars and the batch's number of
    real records. `per_record_means`: the values are means over the batch's records (weighted by count here);
    otherwise they are sums already. finish(sums, count) -> metrics. after(): run once the pass is done (e.g. save
    the text caches that the pass filled)."""

    source: Any
    batch_size: int
    batch_sums: Callable[[Any, int, dict], tuple[Mapping[str, Any], Any]]
    finish: Callable[[dict[str, float], float], dict[str, float]]
    max_batches: int | None = None
    per_record_means: bool = False
    after: Callable[[], None] | None = None

    def __call__(self, state: TrainState, step: int | None = None) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0.0
        loader = eval_loader(self.source, self.batch_size)
        try:
            for k, batch in enumerate(loader):
                if self.max_batches is not None and k >= self.max_batches:
                    break
                values, n = self.batch_sums(state.ema_params, k, batch)
                n = float(n)
                weight = n if self.per_record_means else 1.0
                for name, v in jax.device_get(values).items():
                    sums[name] = sums.get(name, 0.0) + float(v) * weight
                count += n
        finally:
            loader.close()
        if self.after is not None:
            self.after()
        return self.finish(sums, count)

    def on(self, source: Any, max_batches: int | None = None) -> "MeanOverRecords":
        """The same evaluation over another source (the test split: every batch)."""
        return dataclasses.replace(self, source=source, max_batches=max_batches)


def mean_per_record(sums: dict[str, float], count: float) -> dict[str, float]:
    """`finish` of per-record means: the average of each value over the pass's records."""
    return {name: v / max(count, 1.0) for name, v in sums.items()}


SAMPLE_LEADS = ("II", "V2", "V5")


@dataclasses.dataclass(frozen=True)
class SampleWriter:
    """ECGs generated from fixed validation records' conditions at every evaluation step.

    generate(ema_params, key) -> (generated, reference): (n', time, 12) mV each, n' >= count (a device-count
    multiple); the first `count` are kept. reports: those records' report texts. Writes `<directory>/step_<N>.npz`
    (ecg: the generated ECGs, reference, reports, fs, step) and `step_<N>.png` (leads II, V2 and V5 of each record, real in black,
    generated in red) and returns the figure as the `samples` image and `samples_std_ratio`: the generated ECGs'
    amplitude std over the real ones' (1 is right; well below 1 is a flat, collapsed generator). Process 0
    writes; every process generates (the step is one sharded computation)."""

    directory: str
    generate: Callable[[Any, jax.Array], tuple[Any, Any]]
    reports: tuple[str, ...]
    fs: float
    count: int
    seed: int = 0

    def __call__(self, state: TrainState, step: int) -> dict[str, Value]:
        generated, reference = self.generate(state.ema_params, jax.random.PRNGKey(self.seed))
        generated = np.asarray(jax.device_get(generated), np.float32)[: self.count]
        reference = np.asarray(jax.device_get(reference), np.float32)[: self.count]
        if not np.isfinite(generated).all():  # a diagnostic: say so, and let the loss guard judge the training
            logging.warning("step %d: a generated sample is not finite; no samples written", step)
            return {"samples_std_ratio": float("nan")}
        ratio = float(np.std(generated, axis=1).mean() / max(float(np.std(reference, axis=1).mean()), 1e-6))
        figure = sample_figure(generated, reference, self.reports[: self.count], self.fs, step)
        if jax.process_index() == 0:
            os.makedirs(self.directory, exist_ok=True)
            stem = os.path.join(self.directory, f"step_{step:07d}")
            write_npz(stem + ".npz", generated, self.fs, reference=reference,
                      reports=np.asarray(self.reports[: self.count]), step=np.int64(step))
            with atomic_path(stem + ".png", suffix=".png") as tmp:
                figure.savefig(tmp, format="png")
        return {"samples_std_ratio": ratio, "samples": figure_pixels(figure)}


def sample_figure(generated: np.ndarray, reference: np.ndarray, reports: tuple[str, ...] | list[str], fs: float,
                  step: int) -> Figure:
    """One row per record, one column per lead of `SAMPLE_LEADS`: the real ECG (black) and the one generated
    from its conditions (red), mV against s."""
    rows = len(generated)
    fig = Figure(figsize=(12, 1.9 * rows + 0.4), dpi=72)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, len(SAMPLE_LEADS), sharex=True, squeeze=False))
    times = np.arange(generated.shape[1]) / fs
    for r in range(rows):
        for c, lead in enumerate(SAMPLE_LEADS):
            ax = axes[r, c]
            k = lead_index(lead)
            ax.plot(times, reference[r, :, k], color="black", lw=0.8, label="real")
            ax.plot(times, generated[r, :, k], color="tab:red", lw=0.8, label="generated")
            ax.text(0.005, 0.95, lead, transform=ax.transAxes, va="top", fontsize=8, fontweight="bold")
            ax.tick_params(labelsize=6)
        report = reports[r] if r < len(reports) else ""
        axes[r, 0].set_title(report[:110] + ("..." if len(report) > 110 else ""), fontsize=7, loc="left")
    axes[0, -1].legend(loc="upper right", fontsize=6, frameon=False)
    fig.suptitle(f"step {step}: generated (red) from the real ECG's conditions (black)", fontsize=9)
    fig.tight_layout()
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """(height, width, 3) uint8 RGB of a rendered figure."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def split_values(values: Mapping[str, Value]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, images) of an evaluator's values."""
    metrics = {k: float(v) for k, v in values.items() if np.ndim(v) == 0}
    images = {k: np.asarray(v) for k, v in values.items() if np.ndim(v) == 3}
    return metrics, images
