"""`ModelSpec`: everything a trained SE-Diff model is besides its weights, typed.

Training writes the fields into its checkpoint meta, export writes `spec.to_json()` as the model's `config.json`
(format `sediff_jax.model`, version 1), and loading and the Generator read them back through `ModelSpec` only:
rates and lengths, the two networks' configs (the beat window is the VAE's), the noise schedule and prediction,
the latent scale and clip, the text encoder id, the simulator prior and the experience the model was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from sediff_jax.checkpoints.errors import CheckpointError
from sediff_jax.diffusion.schedule import PREDICTIONS, NoiseSchedule, make_schedule
from sediff_jax.io import jsonio
from sediff_jax.models.denoiser import DenoiserConfig
from sediff_jax.models.vae import VAEConfig

MODEL_FORMAT = "sediff_jax.model"
MODEL_VERSION = 1
# x0 is clipped to +-DEFAULT_LATENT_CLIP during sampling (unit-variance latents; ~ the 99th percentile of |latent|
# on PTB-XL). Without it the first reverse step divides the eps error by sqrt(alpha_bar_{T-1}) ~ 1e-4 (cosine
# schedule) and the shipped model's latents end with std ~1000 (measured).
DEFAULT_LATENT_CLIP = 3.0
SCHEDULE_KINDS = ("cosine", "linear")
_MAY_BE_ZERO = {"rhythm_channels", "beat_r_index", "repa_dim", "amplitude_leads"}  # network settings for which 0 means "none" / "first sample"
# Keys of config.json that ModelSpec reads; any other top-level key (loss settings, training step, metrics) is
# kept as provenance and written back unchanged.
_SPEC_KEYS = ("format", "version", "fs", "duration_s", "denoiser", "vae", "schedule", "prediction", "latent_scale",
              "latent_clip", "text_encoder", "prior", "prior_classes", "experience", "weights_dtype",
              "beat_before_s")


def dataclass_from_json(cls, fields: Mapping[str, Any]):
    """Dataclass `cls` from JSON fields (lists become tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


@dataclasses.dataclass(frozen=True)
class ExperienceSpec:
    """used: whether the denoiser was trained with experience reports.  dir: the experience directory it was
    built from (None in an exported model, which carries its corpus).  max_tokens: report encoding length.
    records: reports in the table.  retrieval / distiller: how the reports were built (as recorded)."""

    used: bool = False
    dir: str | None = None
    max_tokens: int = 128
    records: int = 0
    retrieval: Mapping[str, Any] | None = None
    distiller: Any = None

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "ExperienceSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """fs: Hz.  duration_s: s of one generated ECG.  vae / denoiser: the networks' configs.  schedule_kind,
    schedule_steps: the training noise schedule.  prediction: 'epsilon' or 'v'.  latent_scale: latents are
    multiplied by it to unit variance.  latent_clip: |x0| bound while sampling.  text_encoder: encoder id (names
    encoder, weights digest and length).  prior: simulator prior path or 'default'; prior_classes: its classes the
    denoiser's L_sim saw, in order.  experience: see ExperienceSpec.  weights_dtype: stored weight precision.
    provenance: what training and export recorded (loss settings, training step, metrics), not read here."""

    fs: float
    duration_s: float
    vae: VAEConfig
    denoiser: DenoiserConfig
    schedule_kind: str
    schedule_steps: int
    prediction: str
    latent_scale: float
    text_encoder: str
    latent_clip: float = DEFAULT_LATENT_CLIP
    prior: str = "default"
    prior_classes: tuple[str, ...] = ()
    experience: ExperienceSpec = ExperienceSpec()
    weights_dtype: str = "float32"
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Samples of one generated ECG."""
        return int(round(self.duration_s * self.fs))

    @property
    def beat_r_index(self) -> int:
        """The R peak's sample in the VAE's decoded beat."""
        return self.vae.beat_r_index

    @property
    def schedule(self) -> NoiseSchedule:
        return make_schedule(self.schedule_kind, self.schedule_steps)

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.provenance.get("training") or {})

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The `config.json` object of an exported model (JSON types: lists, not tuples)."""
        return jsonio.strict({
            **self.provenance, "format": MODEL_FORMAT, "version": MODEL_VERSION, "fs": self.fs,
            "duration_s": self.duration_s, "vae": dataclasses.asdict(self.vae),
            "denoiser": dataclasses.asdict(self.denoiser),
            "schedule": {"kind": self.schedule_kind, "num_steps": self.schedule_steps},
            "prediction": self.prediction, "latent_scale": self.latent_scale, "latent_clip": self.latent_clip,
            "text_encoder": self.text_encoder, "prior": self.prior, "prior_classes": list(self.prior_classes),
            "experience": dataclasses.asdict(self.experience), "weights_dtype": self.weights_dtype,
        })

    @classmethod
    def from_json(cls, config: Any, where: str) -> "ModelSpec":
        """The spec of a `config.json` object, checked field by field (CheckpointError names `where` and the
        field): a model that loads is one that can generate."""
        validate_model_config(config, where)
        vae = dict(config["vae"])
        if "beat_r_index" not in vae:  # written before the beat window moved into the VAE config
            vae["beat_r_index"] = int(round(float(config.get("beat_before_s", 0.2)) * config["fs"]))
        try:
            return cls(
                fs=float(config["fs"]), duration_s=float(config["duration_s"]),
                vae=dataclass_from_json(VAEConfig, vae),
                denoiser=dataclass_from_json(DenoiserConfig, config["denoiser"]),
                schedule_kind=config["schedule"]["kind"], schedule_steps=int(config["schedule"]["num_steps"]),
                prediction=config["prediction"], latent_scale=float(config["latent_scale"]),
                latent_clip=float(config.get("latent_clip", DEFAULT_LATENT_CLIP)), text_encoder=config["text_encoder"],
                prior=str(config.get("prior") or "default"), prior_classes=tuple(config.get("prior_classes") or ()),
                experience=ExperienceSpec.from_json(config.get("experience") or {}),
                weights_dtype=str(config.get("weights_dtype", "float32")),
                provenance={k: v for k, v in config.items() if k not in _SPEC_KEYS})
        except (TypeError, ValueError) as e:  # settings that pass one by one but not together
            raise CheckpointError(f"{where}: the model settings do not build a model ({e})") from None

    @classmethod
    def from_training(cls, diffusion_meta: Mapping[str, Any], training: Mapping[str, Any]) -> "ModelSpec":
        """The spec of a diffusion stage checkpoint written before stage 2 recorded its `spec` in its meta: read
        from that meta's fields. training: {step, workdir}, kept as provenance."""
        loss = diffusion_meta.get("loss", {})
        vae = dict(diffusion_meta["vae"]["model"])
        vae.setdefault("beat_r_index", int(round(float(loss.get("beat_before_s", 0.2)) * diffusion_meta["fs"])))
        config = {
            "denoiser": diffusion_meta["model"], "vae": vae, "schedule": diffusion_meta["schedule"],
            "prediction": loss.get("prediction", "epsilon"), "fs": diffusion_meta["fs"],
            "duration_s": diffusion_meta["duration_s"], "latent_scale": diffusion_meta["latent_scale"],
            "text_encoder": diffusion_meta["text_encoder"], "prior": diffusion_meta.get("prior", "default"),
            "prior_classes": diffusion_meta.get("prior_classes", []), "loss": loss,
            "experience": diffusion_meta.get("experience", {"used": False}), "training": dict(training),
        }
        where = str(training.get("workdir", "training run"))
        return cls.from_json(jsonio.strict(config), where)


def _field_error(where: str, key: str, value: Any, wanted: str) -> CheckpointError:
    return CheckpointError(f"{where}: field {key!r} is {json.dumps(value)[:80]}; expected {wanted}")


MAX_ECG_SAMPLES = 120_000  # per ECG (60 s at 2000 Hz): a bound on a model folder's memory before allocating
MAX_MODEL_WIDTH = 4096  # channels, hidden and embedding sizes of a model folder's networks
# Rough bytes of one ECG's widest VAE activation (samples x widest channel x 4 bytes) allowed per ECG.
MAX_ACTIVATION_BYTES = 1 << 30


def validate_model_config(config: Any, where: str) -> None:
    """Check a model `config.json` object field by field; CheckpointError names `where` and the field."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: not a model config (a JSON object is expected)")
    for key in ("denoiser", "vae", "schedule", "prediction", "fs", "duration_s", "latent_scale", "text_encoder"):
        if key not in config:
            raise CheckpointError(f"{where}: incompatible checkpoint, the config has no {key!r}")

    def positive(key: str, value: Any, limit: float = math.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= limit):
            raise _field_error(where, key, value, f"a number in (0, {limit:g}]")

    positive("fs", config["fs"], 10_000)
    positive("duration_s", config["duration_s"], 3600)
    positive("latent_scale", config["latent_scale"], 1e6)
    positive("latent_clip", config.get("latent_clip", DEFAULT_LATENT_CLIP), 1e6)
    positive("beat_before_s", config.get("beat_before_s", 0.2), config["duration_s"])
    samples = round(config["fs"] * config["duration_s"])
    if samples < 8:
        raise _field_error(where, "duration_s", config["duration_s"], "at least 8 samples at fs")
    if samples > MAX_ECG_SAMPLES:
        raise CheckpointError(f"{where}: fs={config['fs']:g} Hz x duration_s={config['duration_s']:g} s is "
                              f"{samples} samples per ECG; models of up to {MAX_ECG_SAMPLES} (e.g. 60 s at 2000 Hz) "
                              "are supported, so this one is refused before any memory is allocated")
    if config["prediction"] not in PREDICTIONS:
        raise _field_error(where, "prediction", config["prediction"], f"one of {PREDICTIONS}")
    schedule = config["schedule"]
    if not isinstance(schedule, dict) or schedule.get("kind") not in SCHEDULE_KINDS:
        raise _field_error(where, "schedule", schedule, "{'kind': 'cosine' or 'linear', 'num_steps': ...}")
    steps = schedule.get("num_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 100_000:
        raise _field_error(where, "schedule.num_steps", steps, "an integer in [2, 100000]")
    if not isinstance(config["text_encoder"], str) or not config["text_encoder"]:
        raise _field_error(where, "text_encoder", config["text_encoder"], "a text encoder id")
    for key, cls in (("denoiser", DenoiserConfig), ("vae", VAEConfig)):
        fields = config[key]
        if not isinstance(fields, dict):
            raise _field_error(where, key, fields, "an object of model settings")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise CheckpointError(f"{where}: field {key!r} has unknown settings {unknown[:3]} (a model of another "
                                  "sediff_jax version?)")
        for name, value in fields.items():
            values = value if isinstance(value, list) else [value]
            low = 0 if name in _MAY_BE_ZERO else 1e-12
            if not all(isinstance(v, (int, float, str, bool)) or v is None for v in values) or any(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and not low <= v <= 65_536
                    for v in values):
                interval = "[0, 65536]" if low == 0 else "(0, 65536]"
                raise _field_error(where, f"{key}.{name}", value, f"numbers in {interval} (or a setting name)")
        widths = [v for name in ("channels", "time_embed_dim", "beat_hidden")
                  for v in (fields.get(name) if isinstance(fields.get(name), list) else [fields.get(name)])
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if widths and max(widths) > MAX_MODEL_WIDTH:
            raise _field_error(where, f"{key} widths", max(widths), f"at most {MAX_MODEL_WIDTH} (a memory bound)")
    channels = config["vae"].get("channels")
    vae_channels = [c for c in (channels if isinstance(channels, list) else [channels])
                    if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if vae_channels and samples * max(vae_channels) * 4 > MAX_ACTIVATION_BYTES:
        raise CheckpointError(f"{where}: one ECG of {samples} samples through VAE channels {max(vae_channels):g} "
                              f"needs ~{samples * max(vae_channels) * 4 / 2**30:.1f} GiB per activation (bound: "
                              f"{MAX_ACTIVATION_BYTES / 2**30:g} GiB); refused before allocating")
    experience = config.get("experience", {"used": False})
    if not isinstance(experience, dict) or not isinstance(experience.get("used", False), bool):
        raise _field_error(where, "experience", experience, "an object with 'used': true/false")
    if not isinstance(config.get("prior_classes", []), list):
        raise _field_error(where, "prior_classes", config.get("prior_classes"), "a list of class names")
