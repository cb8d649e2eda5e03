"""Generate one ECG per real record's conditions and score the set: what `experiments/evaluate.py` and
`experiments/ablate.py` run.

`generate_paired` samples from a model for `RealPairs`; `score` computes the paired metrics and, given the ECG-text
CLIP model (`sediff_jax.evaluation.clip.ClipEncoder`), the distribution and alignment metrics on its features:
FID, rFID, k-NN precision/recall, CLIP score and rCLIP, optionally beside other real records scored the same way
(`reference_metrics`). `markdown_report` renders both.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from sediff_jax.evaluation.distribution import (
    clip_score,
    frechet_distance,
    knn_precision_recall,
    relative_clip,
    relative_fid,
    split_half_fid,
)
from sediff_jax.evaluation.networks import batched_apply
from sediff_jax.evaluation.paired import RealPairs, markdown_table, paired_metrics, paired_per_record
from sediff_jax.evaluation.physiology import ectopy_scores
from sediff_jax.evaluation.signal import amplitude_spread
from sediff_jax.generation import Generator
from sediff_jax.io.npz import write_npz
from sediff_jax.signal import lead_amplitudes
from sediff_jax.errors import SediffError

MIN_DISTRIBUTION_RECORDS = 8  # two halves of >= 4 for FID_split, more than k = 3 neighbours


class NonFiniteECG(SediffError, FloatingPointError):
    """The model produced NaN or inf samples."""


RHYTHM_SOURCES = ("plan", "record")
AMPLITUDE_SOURCES = ("sampler", "record")


def generate_paired(model, pairs: RealPairs, sampler, seed: int = 0, experience: str = "auto",
                    max_batch: int = 64, rhythm: str = "plan", amplitudes: str = "sampler"
                    ) -> tuple[np.ndarray, float]:
    """(generated (n, time, 12) float32 mV, seconds): row i from record i's prompt, key fold_in(seed, i).

    rhythm: 'plan' (the generator plans each ECG's beats from its prompt, as from text alone) or 'record' (a model
    with the rhythm scaffold is given each record's own R peaks, so generated and real beats fall together).
    amplitudes: 'sampler' (each lead's amplitude as `sampler.lead_amplitudes` says: the model's or a retrieved
    patient's) or 'record' (each record's own lead amplitudes, `signal.lead_amplitudes` of its ECG, as a prompt
    naming it in `amplitudes_from` would get them)."""
    if rhythm not in RHYTHM_SOURCES:
        raise ValueError(f"rhythm {rhythm!r} is unknown; expected one of {RHYTHM_SOURCES}")
    if amplitudes not in AMPLITUDE_SOURCES:
        raise ValueError(f"amplitudes {amplitudes!r} is unknown; expected one of {AMPLITUDE_SOURCES}")
    rhythms = pairs.rhythms(model.spec.duration_s) if rhythm == "record" else None
    own = lead_amplitudes(pairs.ecg[:, :model.num_samples]) if amplitudes == "record" else None
    start = time.perf_counter()
    generated = Generator(model, max_batch=max_batch).generate(pairs.prompts, seed, sampler, experience,
                                                               rhythms=rhythms, amplitudes=own)
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(generated)):
        raise NonFiniteECG(f"{model.source}: the model produced non-finite ECGs")
    return generated, seconds


def write_generated(path, generated: np.ndarray, fs: float, pairs: RealPairs) -> None:
    """`generated` (n, time, 12) mV as an npz (`sediff_jax.io.npz`) with each row's record id, prompt text and
    requested heart rate (bpm, NaN where none), to look at or re-measure."""
    write_npz(path, generated, fs, record_ids=np.array(pairs.record_ids), texts=np.array(pairs.texts),
              hr_bpm=pairs.requested_hr_bpm.astype(np.float32))


class GeneratedFileError(SediffError, ValueError):
    """A file of generated ECGs (`write_generated`) is missing, unreadable or incomplete."""


def read_generated(path) -> tuple[np.ndarray, float, list[str], list[str]]:
    """(ecg (n, time, 12) float32 mV, fs Hz, record ids, prompt texts) of a `write_generated` file (evaluate's
    --save_generated, sweep_sampling's per-variant files); GeneratedFileError naming the file otherwise."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("ecg", "fs", "record_ids", "texts") if k not in f.files]
            if missing:
                raise GeneratedFileError(f"{path}: not a file of generated ECGs (no {', '.join(missing)}; "
                                         "write one with evaluate --save_generated)")
            ecg, fs = np.asarray(f["ecg"], np.float32), float(f["fs"])
            record_ids, texts = [str(r) for r in f["record_ids"]], [str(t) for t in f["texts"]]
    except FileNotFoundError:
        raise GeneratedFileError(f"{path}: not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, GeneratedFileError):
            raise
        raise GeneratedFileError(f"{path}: unreadable ({e})") from None
    if ecg.ndim != 3 or ecg.shape[2] != 12 or len(record_ids) != len(ecg) or len(texts) != len(ecg):
        raise GeneratedFileError(f"{path}: ecg {ecg.shape} with {len(record_ids)} record ids and {len(texts)} texts "
                                 "(expected (n, time, 12) and n of each)")
    if not np.isfinite(ecg).all():
        raise GeneratedFileError(f"{path}: the ECGs contain NaN or inf")
    return ecg, fs, record_ids, texts


def distribution_metrics(encoder, generated: np.ndarray, pairs: RealPairs, k: int = 3, seed: int = 0
                         ) -> dict[str, Any]:
    """Feature-space metrics of `generated` (n, time, 12) mV against the n paired real records, on the features
    of `encoder` (`sediff_jax.evaluation.clip.ClipEncoder`). FID_split is the FID of two random halves of the
    real records (seed `seed`), as the paper defines rFID; CLIP scores use each record's report."""
    texts = [p.text for p in pairs.prompts]
    gen_features, real_features = encoder.ecg_features(generated), encoder.ecg_features(pairs.ecg)
    gen_emb, real_emb = encoder.ecg_embeddings(generated), encoder.ecg_embeddings(pairs.ecg)
    text_emb = encoder.text_embeddings(texts)
    fid = frechet_distance(real_features, gen_features)
    fid_split = split_half_fid(real_features, seed)
    precision, recall = knn_precision_recall(real_features, gen_features, k)
    clip_gen, clip_real = clip_score(gen_emb, text_emb), clip_score(real_emb, text_emb)
    shuffled = np.random.default_rng(seed).permutation(len(texts))
    return {"computed": True, "encoder": encoder.id, "fid": fid, "fid_split": fid_split,
            "rfid": relative_fid(fid_split, fid), "precision": precision, "recall": recall, "k": k,
            "clip_generated": clip_gen, "clip_real": clip_real,
            "clip_real_shuffled": clip_score(real_emb, text_emb[shuffled]),
            "rclip": relative_clip(gen_emb, real_emb, text_emb)}


def reference_metrics(encoder, reference: RealPairs, pairs: RealPairs, k: int = 3, seed: int = 0) -> dict[str, Any]:
    """FID, rFID and k-NN precision/recall of other real records (e.g. another split) against `pairs`, as if they
    were generated: what an ideal generator scores on the same encoder and sizes."""
    real, other = encoder.ecg_features(pairs.ecg), encoder.ecg_features(reference.ecg)
    fid, fid_split = frechet_distance(real, other), split_half_fid(real, seed)
    precision, recall = knn_precision_recall(real, other, k)
    return {"records": len(reference.record_ids), "fid": fid, "rfid": relative_fid(fid_split, fid),
            "precision": precision, "recall": recall, "clip_real": clip_score(
                encoder.ecg_embeddings(reference.ecg), encoder.text_embeddings(reference.texts))}


def vae_reconstructions(model, ecg: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`ecg` (n, time, 12) mV through the model's VAE (encoder mean, decoder): what a latent model with this VAE
    can at best reproduce. (n, time, 12) float32 mV."""
    vae = model.vae()
    return batched_apply(jax.jit(lambda x: vae(x)["reconstruction"]), ecg, batch_size)


def vae_reference_metrics(encoder, reconstructed: np.ndarray, pairs: RealPairs, k: int = 3, seed: int = 0
                          ) -> dict[str, Any]:
    """The paired records after the VAE (`vae_reconstructions`) scored as if generated: the ceiling of any
    denoiser on this VAE. MAE against the records, and the feature-space metrics."""
    return {"mae_mv": float(np.mean(np.abs(reconstructed - pairs.ecg))),
            **{key: value for key, value in distribution_metrics(encoder, reconstructed, pairs, k, seed).items()
               if key in ("fid", "rfid", "precision", "recall", "clip_generated", "rclip")}}


def score(generated: np.ndarray, pairs: RealPairs, encoder=None, reference: RealPairs | None = None,
          reconstructed: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, rows). summary: {"paired": `paired_metrics`, "amplitude": `signal.amplitude_spread` (needs no
    encoder), "ectopy": `physiology.ectopy_scores` of the records coding premature beats, "distribution":
    `distribution_metrics` (with
    "reference": `reference_metrics` when `reference` is given, "vae_reference": `vae_reference_metrics` when the
    paired records' VAE `reconstructed` are) or {"computed": False, "why": ...}}. rows: `paired_per_record`, the
    per-record values the paired summary was made of (e.g. for `paired_differences`). Each generated ECG goes
    down to R-peak detection once; the real records use their stored peaks."""
    rows = paired_per_record(generated, pairs.ecg, pairs.fs, pairs.requested_hr_bpm, pairs.r_peaks or None)
    paired = paired_metrics(generated, pairs.ecg, pairs.fs, pairs.requested_hr_bpm, rows)
    amplitude = amplitude_spread(generated, pairs.ecg) if len(generated) >= 2 else {
        "computed": False, "why": f"{len(generated)} record; a spread needs at least 2"}
    if encoder is None:
        distribution = {"computed": False, "why": "no ECG-text CLIP encoder given"}
    elif len(generated) < MIN_DISTRIBUTION_RECORDS:
        distribution = {"computed": False, "why": f"{len(generated)} records; feature statistics need at least "
                        f"{MIN_DISTRIBUTION_RECORDS}"}
    elif abs(encoder.fs - pairs.fs) > 1e-6 or encoder.num_samples != pairs.ecg.shape[1]:
        distribution = {"computed": False, "why": f"the encoder takes {encoder.num_samples} samples at "
                        f"{encoder.fs:g} Hz, the ECGs are {pairs.ecg.shape[1]} at {pairs.fs:g} Hz"}
    else:
        distribution = distribution_metrics(encoder, generated, pairs)
        if reference is not None:
            distribution["reference"] = reference_metrics(encoder, reference, pairs)
        if reconstructed is not None:
            distribution["vae_reference"] = vae_reference_metrics(encoder, reconstructed, pairs)
    ectopy = (ectopy_scores(generated, pairs.ecg, pairs.fs, pairs.codes, rows["r_peaks_generated"],
                            pairs.r_peaks or None) if pairs.codes else {})
    return {"paired": paired, "amplitude": amplitude, "ectopy": ectopy, "distribution": distribution}, rows


def distribution_table(distribution: dict[str, Any]) -> str:
    """The distribution metrics as a Markdown table, or a line saying why they are missing."""
    if not distribution.get("computed"):
        return f"Distribution metrics (FID, rFID, CLIP): not computed, {distribution.get('why', '')}."
    d, ref, vae = distribution, distribution.get("reference"), distribution.get("vae_reference")
    rows = [("FID (real vs generated)", f"{d['fid']:.4g}", ref and f"{ref['fid']:.4g}", vae and f"{vae['fid']:.4g}"),
            ("FID split (two halves of real)", f"{d['fid_split']:.4g}", None, None),
            ("rFID", f"{d['rfid']:.4f}", ref and f"{ref['rfid']:.4f}", vae and f"{vae['rfid']:.4f}"),
            (f"precision / recall (k = {d['k']})", f"{d['precision']:.3f} / {d['recall']:.3f}",
             ref and f"{ref['precision']:.3f} / {ref['recall']:.3f}",
             vae and f"{vae['precision']:.3f} / {vae['recall']:.3f}"),
            ("CLIP score, generated", f"{d['clip_generated']:.4f}", ref and f"{ref['clip_real']:.4f}",
             vae and f"{vae['clip_generated']:.4f}"),
            ("CLIP score, real", f"{d['clip_real']:.4f}", None, None),
            ("CLIP score, real with shuffled texts", f"{d['clip_real_shuffled']:.4f}", None, None),
            ("rCLIP", f"{d['rclip']:.4f}", None, vae and f"{vae['rclip']:.4f}")]
    header, notes = ["metric", "generated"], [f"Encoder `{d['encoder']}`."]
    if ref:
        header.append("other real records")
        notes.append(f"Reference: {ref['records']} other real records scored as if generated (their own reports for "
                     "the CLIP score).")
    if vae:
        header.append("records through the VAE")
        notes.append(f"VAE reference: the paired records encoded and decoded by the model's VAE (MAE "
                     f"{vae['mae_mv']:.4f} mV), the ceiling of a denoiser on this VAE.")
    columns = [True, True, bool(ref), bool(vae)]
    lines = [" ".join(notes), "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(value or "" for value, used in zip(row, columns) if used) + " |" for row in rows]
    return "\n".join(lines)


def amplitude_line(amplitude: dict[str, Any] | None) -> str:
    """One sentence on `signal.amplitude_spread`, or '' when it was not computed."""
    if not amplitude or "spread_ratio" not in amplitude:
        return ""
    return (f"Amplitude spread (peak-to-peak per lead, std across records, mean over leads): generated "
            f"{amplitude['std_generated_mv']:.3f} mV against real {amplitude['std_real_mv']:.3f} mV, ratio "
            f"**{amplitude['spread_ratio']:.2f}**; mean amplitude ratio {amplitude['mean_ratio']:.2f}.")


def ectopy_line(ectopy: dict[str, Any] | None) -> str:
    """One sentence on `physiology.ectopy_scores`, or '' when no record codes premature beats."""
    if not ectopy:
        return ""
    parts = [f"{code} ({e['records']}) {e['generated_difference']:.2f} against {e['real_difference']:.2f}"
             for code, e in ectopy.items()]
    return ("Premature beats unlike the dominant beat (|beat - template| / |template| over the QRS, median; "
            "generated against real): " + ", ".join(parts) + ".")


def markdown_report(title: str, summary: str, result: dict[str, Any]) -> str:
    extra = [line for line in (amplitude_line(result.get("amplitude")), ectopy_line(result.get("ectopy"))) if line]
    return (f"# {title}\n\n{summary}\n\n{markdown_table(result['paired'])}\n\n"
            + "".join(f"{line}\n\n" for line in extra) + f"{distribution_table(result['distribution'])}\n")
