"""Text (+ age, sex, heart rate) to 12-lead ECG with a trained SE-Diff model: condition tokens, the sampler over a
device mesh, and the VAE decoder.

    model = load_model("checkpoints/sediff_ptbxl100")
    ecg = Generator(model).generate([make_prompt("sinus rhythm, normal ECG", age=54, sex="F", hr=70)], seed=0)
    # ecg: (1, 1000, 12) float32, mV, at model.fs

Record i of a call is drawn from fold_in(key(seed), i): the same seed and prompts give the same ECGs on any
number of devices and with any `max_batch`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.checkpoints import CheckpointError
from sediff_jax.conditioning import experience_condition, prior_class_index
from sediff_jax.diffusion.sampling import (SamplerConfig, anneal_condition, denoise_steps, initial_latents,
                                          sampling_timesteps)
from sediff_jax.experience import ExperienceIndex, ProfileCorpus, RetrievalConfig
from sediff_jax.experience.distill import OfflineDistiller
from sediff_jax.experience.reports import PromptExperience
from sediff_jax.experience.retrieval import PATIENT_FACTOR_KEYS
from sediff_jax.generation.amplitudes import (AmplitudeError, amplitude_source, amplitudes_from_record,
                                             draw_neighbour_amplitudes, given_amplitudes, match_lead_amplitudes)
from sediff_jax.generation.model import SEDiffModel, experience_profiles_path
from sediff_jax.generation.prompts import Prompt
from sediff_jax.generation.rhythm import (RhythmError, RhythmPlan, rhythm_from_record, rhythm_from_rr,
                                         simulated_rhythm)
from sediff_jax.leads import NUM_LEADS, project_to_lead_space
from sediff_jax.models.conditions import Conditions
from sediff_jax.parallel import batch_sharding, make_mesh, replicated_sharding
from sediff_jax.signal.phase import pad_peaks, rhythm_features
from sediff_jax.simulator.consistency import simulator_energies
from sediff_jax.simulator.priors import load_prior
from sediff_jax.simulator.params import waves_of_classes
from sediff_jax.text import HashingEncoder, MiniLMEncoder, TextCache, encoder_from_id

RHYTHM_STREAM = 0x52485954  # folded into a record's key for its simulated rhythm (the sampler's noise is untouched)
EXPERIENCE_MODES = ("auto", "off")


def text_encoder_for(model: SEDiffModel):
    """The text encoder the model was trained with (its id names the encoder, weights digest and length)."""

    try:
        return encoder_from_id(model.spec.text_encoder)
    except ValueError as e:
        raise CheckpointError(f"{model.source}: {e}") from None


CADS_NOISE_STREAM = 2**31 - 2  # fold_in index of a record's CADS noise stream (steps fold in their timestep)


def cads_conditions(conditions: Conditions, keys: jax.Array, t: jax.Array, num_train_steps: int,
                    config: SamplerConfig) -> Conditions:
    """The text and experience tokens of `conditions` annealed by CADS at timestep t (`anneal_condition`); record
    i's noise comes from its key, so it does not depend on the batch it shares."""
    fraction = t.astype(jnp.float32) / max(num_train_steps - 1, 1)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, CADS_NOISE_STREAM), t))(keys)
    annealed = {}
    for offset, (tokens, mask) in enumerate((("text_tokens", "text_mask"), ("experience_tokens", "experience_mask"))):
        group_keys = jax.vmap(lambda k: jax.random.fold_in(k, offset))(step_keys)  # noqa: B023
        annealed[tokens] = jax.vmap(lambda y, m, k: anneal_condition(y, m, fraction, k, config))(
            getattr(conditions, tokens), getattr(conditions, mask), group_keys)
    return conditions.replace(**annealed)


class Generator:
    """Generates ECGs from prompts with `model`, batch-sharded over `mesh` (default: every device)."""

    def __init__(self, model: SEDiffModel, mesh=None, text_encoder=None, prior=None, max_batch: int = 64,
                 chunk_steps: int = 25):

        self.model = model
        self.mesh = make_mesh() if mesh is None else mesh
        self.encoder = text_encoder_for(model) if text_encoder is None else text_encoder
        prior_path = model.spec.prior
        self.prior = prior if prior is not None else load_prior(prior_path)
        self.class_names = model.spec.prior_classes or tuple(self.prior.class_names)
        missing = [c for c in self.class_names if c not in self.prior.classes]
        if missing:
            raise CheckpointError(f"{model.source}: the simulator prior lacks the model's classes {missing[:3]}")
        self.wave_table = self.prior.wave_table(self.class_names)
        self.latent_clip = model.spec.latent_clip
        self.prompt_experience, self.experience_cache = self._experience_source()
        devices = self.mesh.devices.size
        self.max_batch = max(devices, max_batch - max_batch % devices)
        self.chunk_steps = chunk_steps
        rep = replicated_sharding(self.mesh)
        self.params = jax.device_put((model.denoiser_params, model.vae_params), rep)
        vae = model.vae()
        self.latent_shape = jax.eval_shape(lambda e: vae.encode(e)[0],
                                           jax.ShapeDtypeStruct((1, model.num_samples, 12), jnp.float32)).shape[1:]
        self._runners: dict = {}

    def _experience_source(self):
        """(PromptExperience, TextCache) for a model trained with experience whose corpus is at hand, else
        (None, None): such a model gets the masked segment, as in its condition-dropout training."""

        self.experience_error = None
        try:
            path = experience_profiles_path(self.model)
        except CheckpointError as e:  # raised when experience is asked for ('auto'), not for 'off'
            self.experience_error = e
            return None, None
        if path is None:
            return None, None
        experience = self.model.spec.experience
        retrieval = experience.retrieval or {}
        config = RetrievalConfig(weights=retrieval.get("weights") or {}, k=int(retrieval.get("k", 5)),
                                 **{key: float(retrieval[key]) for key in PATIENT_FACTOR_KEYS if key in retrieval})
        index = ExperienceIndex(ProfileCorpus.load(path), config)
        length = int(experience.max_tokens)
        try:
            encoder = (HashingEncoder(dim=self.encoder.dim, max_length=length)
                       if isinstance(self.encoder, HashingEncoder) else MiniLMEncoder(max_length=length))
        except FileNotFoundError as e:  # no MiniLM weights here (text from a PrecomputedEncoder): 'off' still works
            self.experience_error = CheckpointError(f"{self.model.source}: experience needs the MiniLM weights: {e}; "
                                                    "use experience='off'")
            return None, None
        return PromptExperience(index, OfflineDistiller()), TextCache(encoder)

    def experience_reports(self, prompts: Sequence[Prompt], experience: str = "auto") -> list[str]:
        """Each prompt's experience report ('' where none: experience off, a model trained without it, or no
        corpus code named in the prompt)."""
        if experience != "off" and self.experience_error is not None:
            raise self.experience_error
        if experience == "off" or self.prompt_experience is None:
            return [""] * len(prompts)
        return [self.prompt_experience.report(p.text, p.age, p.sex_code)[0] for p in prompts]

    # Conditions ------------------------------------------------------------------------------------------------
    @property
    def uses_rhythm(self) -> bool:
        """Whether the model was trained with the rhythm scaffold (and so is told where each beat falls)."""
        return self.model.spec.denoiser.rhythm_channels > 0

    def plan_rhythms(self, prompts: Sequence[Prompt], seed: int = 0,
                     rhythms: Sequence[RhythmPlan | None] | None = None) -> list[RhythmPlan | None]:
        """Each prompt's rhythm: `rhythms[i]` where given, else the prompt's rr_ms or rhythm_from record (each
        record read once), else the simulator's rhythm of its text and heart rate (seeded by (seed, i)); all None
        for a model trained without the scaffold (an explicit rhythm for such a model is an error)."""
        given = list(rhythms) if rhythms is not None else [None] * len(prompts)
        if len(given) != len(prompts):
            raise ValueError(f"{len(given)} rhythms for {len(prompts)} prompts")
        if not self.uses_rhythm:
            if any(r is not None for r in given) or any(p.rr_ms is not None or p.rhythm_from is not None
                                                       for p in prompts):
                raise RhythmError(f"{self.model.source}: this model was trained without the rhythm scaffold, so it "
                                  "cannot follow a given rhythm (rr_ms / rhythm_from); use a scaffold model")
            return [None] * len(prompts)
        duration = self.model.spec.duration_s
        plans, records = [], {}
        for i, (prompt, plan) in enumerate(zip(prompts, given)):
            if plan is None and prompt.rr_ms is not None:
                plan = rhythm_from_rr(prompt.rr_ms, duration, where=f"prompt {i} rr_ms")
            if plan is None and prompt.rhythm_from is not None:
                if prompt.rhythm_from not in records:
                    records[prompt.rhythm_from] = rhythm_from_record(prompt.rhythm_from, duration)
                plan = records[prompt.rhythm_from]
            if plan is None:
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), i), RHYTHM_STREAM)
                plan = simulated_rhythm(prompt, key, duration)
            plans.append(plan)
        return plans

    def rhythm_condition(self, plans: Sequence[RhythmPlan | None]) -> np.ndarray:
        """(len(plans), latent time, rhythm channels) float32: the scaffold of each plan (zeros for None: no
        scaffold)."""
        length = self.latent_shape[0]
        down = self.model.num_samples // length
        peaks = pad_peaks([np.zeros(0) if p is None else p.r_peak_samples(self.model.fs) for p in plans])
        return np.asarray(rhythm_features(peaks, length, down, self.model.spec.denoiser.rhythm_channels), np.float32)

    def conditions(self, prompts: Sequence[Prompt], experience: str = "auto",
                   rhythms: Sequence[RhythmPlan | None] | None = None,
                   amplitudes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Host arrays of the denoiser's conditions plus `class_index` (simulator prior class) per prompt.

        experience='auto' retrieves and distils a report per prompt for a model trained with experience (see
        `experience_reports`); 'off', or a model trained without, gives the masked-out experience segment, which
        is what the model saw when experience was absent or dropped. amplitudes: (n, 12) mV, NaN unknown, what an
        amplitude-conditioned model is told (None: unknown); a model without them ignores it."""
        if experience not in EXPERIENCE_MODES:
            raise ValueError(f"experience={experience!r}; expected one of {EXPERIENCE_MODES}")
        texts = [p.text for p in prompts]
        encoding = self.encoder.encode(texts)
        experience_tokens, experience_mask = experience_condition(
            self.experience_reports(prompts, experience), self.experience_cache, self.encoder.dim)
        return {
            "text_tokens": encoding.tokens.astype(np.float32), "text_mask": encoding.mask,
            "experience_tokens": experience_tokens, "experience_mask": experience_mask,
            "age": np.array([np.nan if p.age is None else p.age for p in prompts], np.float32),
            "sex": np.array([p.sex_code for p in prompts], np.int32),
            "hr_bpm": np.array([np.nan if p.hr is None else p.hr for p in prompts], np.float32),
            "class_index": prior_class_index(texts, self.class_names),
            **({"rhythm": self.rhythm_condition(rhythms or [None] * len(prompts))} if self.uses_rhythm else {}),
            **({"amplitudes": self.amplitude_condition(len(prompts), amplitudes)} if self.uses_amplitudes else {}),
        }

    @property
    def uses_amplitudes(self) -> bool:
        """Whether the denoiser was trained told each lead's amplitude (`DenoiserConfig.amplitude_leads`)."""
        return self.model.spec.denoiser.amplitude_leads > 0

    def amplitude_condition(self, n: int, amplitudes: np.ndarray | None = None) -> np.ndarray:
        """(n, 12) float32 mV: `amplitudes` checked (shape; finite values must be positive), or all NaN (unknown)."""
        if amplitudes is None:
            return np.full((n, NUM_LEADS), np.nan, np.float32)
        amplitudes = np.asarray(amplitudes, np.float32)
        if amplitudes.shape != (n, NUM_LEADS):
            raise ValueError(f"amplitudes of shape {amplitudes.shape} for {n} prompts; expected ({n}, {NUM_LEADS})")
        if np.any(amplitudes[np.isfinite(amplitudes)] <= 0) or np.any(np.isinf(amplitudes)):
            raise ValueError("lead amplitudes must be positive and finite (mV), or NaN for unknown")
        return amplitudes

    # Sampling --------------------------------------------------------------------------------------------------
    def _energy(self, vae, batch):
        """Simulator-guidance energy of latents x0 (batch, time, C): L_Euler + L_interlead + L_sim of the
        decoded beat (`simulator_energies`), with the prompts' prior classes and heart rates."""
        fs, scale, before = self.model.fs, self.model.latent_scale, self.model.spec.beat_r_index
        waves = waves_of_classes(self.wave_table, batch["class_index"])

        def energy(x0):
            energies = simulator_energies(vae.beat_decoder(x0 / scale), fs, before, waves, batch["hr_bpm"])
            return sum(energies.values())

        return energy

    def _runner(self, config: SamplerConfig, count: int, decode: bool) -> Callable:
        # the lead amplitudes are a host step after decoding: one compiled sampler for every setting of them
        config = dataclasses.replace(config, lead_amplitudes="model", amplitude_strength=1.0)
        key = (config, count, decode)
        if key not in self._runners:
            model = self.model
            schedule, prediction, scale = model.schedule, model.prediction, model.latent_scale
            denoiser_graphdef, vae_graphdef = model.denoiser_graphdef, model.vae_graphdef

            def run(params, batch, x, keys, first):
                from flax import nnx

                denoiser = nnx.merge(denoiser_graphdef, params[0])
                vae = nnx.merge(vae_graphdef, params[1])
                conditions = Conditions.from_batch(batch)

                def net(x_t, t, drop):  # x_t holds 1, 2 (guidance) or 4 (per-group guidance) copies of the batch
                    copies = x_t.shape[0] // x.shape[0]
                    annealed = (conditions if config.cads_noise == 0 else
                                cads_conditions(conditions, keys, t[0], schedule.num_steps, config))
                    return denoiser(x_t, t, annealed.tile(copies), drop)

                x = denoise_steps(net, schedule, prediction, config, x, keys, first, count,
                                  self._energy(vae, batch))
                if not decode:
                    return x
                ecg = vae.decoder(x / scale)
                return project_to_lead_space(ecg) if config.exact_limb_leads else ecg

            data = batch_sharding(self.mesh)
            self._runners[key] = jax.jit(run, in_shardings=(replicated_sharding(self.mesh), data, data, data, None),
                                         out_shardings=data)
        return self._runners[key]

    def generate(self, prompts: Sequence[Prompt], seed: int = 0, sampler: SamplerConfig | None = None,
                 experience: str = "auto", progress: Callable[[int], None] | None = None,
                 rhythms: Sequence[RhythmPlan | None] | None = None,
                 amplitudes: np.ndarray | None = None) -> np.ndarray:
        """ECGs (len(prompts), time, 12) float32 mV at `model.fs`; progress(n) is called with the number of
        reverse steps just done (summed over batches). `sampler.clip_x0` None means the model's latent clip
        (its spec's `latent_clip`); pass inf for none. rhythms: per prompt, the beats to follow (`plan_rhythms`
        fills the rest; a model trained with the scaffold is told them). sampler: None is
        `SamplerConfig.recommended()` (DDIM-50, eta 1, guidance 2, exact limb leads, lead amplitudes moved 0.75 of
        the way to a retrieved patient's where the model's corpus has them: `lead_amplitude_source`; a prompt's
        `amplitudes_from` record's where it names one: `amplitude_targets`). A model trained with amplitudes as a
        condition is told those targets (unknown where there are none). amplitudes: (n, 12) mV per prompt, a row of
        NaN where none: lead amplitudes given directly, taken as a named `amplitudes_from` record's would be (an
        evaluation gives each record's own)."""
        prompts = list(prompts)
        sampler = SamplerConfig.recommended() if sampler is None else sampler
        plans = self.plan_rhythms(prompts, seed, rhythms)
        if sampler.clip_x0 is None:
            sampler = dataclasses.replace(sampler, clip_x0=self.latent_clip)
        if not math.isfinite(sampler.clip_x0):
            sampler = dataclasses.replace(sampler, clip_x0=None)
        if not prompts:
            raise ValueError("no prompts to generate from")
        sampling_timesteps(self.model.schedule.num_steps, sampler.num_steps)  # validates num_steps
        targets = self.amplitude_targets(prompts, sampler, experience, seed, amplitudes)
        told = self.amplitude_condition(len(prompts), targets) if self.uses_amplitudes else None
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(prompts)))
        outputs = []
        for start in range(0, len(prompts), self.max_batch):
            part = prompts[start:start + self.max_batch]
            outputs.append(self._generate_batch(part, plans[start:start + len(part)], keys[start:start + len(part)],
                                                sampler, experience, progress,
                                                None if told is None else told[start:start + len(part)]))
        ecg = np.concatenate(outputs)[: len(prompts)]
        if targets is not None:
            ecg = match_lead_amplitudes(ecg, targets, sampler.exact_limb_leads, sampler.amplitude_strength)
        return ecg

    def amplitude_targets(self, prompts: Sequence[Prompt], sampler: SamplerConfig, experience: str = "auto",
                          seed: int = 0, amplitudes: np.ndarray | None = None) -> np.ndarray | None:
        """(n, 12) mV, NaN where none: the lead amplitudes each generated ECG is moved towards (and an
        amplitude-conditioned model is told): the given `amplitudes` row where it is finite, else a prompt's
        `amplitudes_from` record's where it names one (each record read once), else a retrieved patient's where the
        source is 'retrieved'; None when no prompt gets any (the model's own amplitudes). Amplitudes given or named
        with `lead_amplitudes='model'` are an error, as is a given row that is partly NaN or not positive."""
        given = [p.amplitudes_from for p in prompts]
        amplitudes, direct = given_amplitudes(amplitudes, len(prompts))
        if sampler.lead_amplitudes == "model" and (any(given) or direct.any()):
            raise AmplitudeError(f"{'a prompt names amplitudes_from' if any(given) else 'lead amplitudes are given'}"
                                 ", and lead_amplitudes='model' keeps the model's own amplitudes; use 'auto' or "
                                 "'retrieved'")
        retrieve = self.lead_amplitude_source(sampler, experience) == "retrieved"
        if not retrieve and not any(given) and not direct.any():
            return None
        targets = (self.retrieved_amplitudes(prompts, seed) if retrieve
                   else np.full((len(prompts), NUM_LEADS), np.nan, np.float32))
        records: dict[str, np.ndarray] = {}
        for i, record in enumerate(given):
            if record:
                if record not in records:
                    records[record] = amplitudes_from_record(record, self.model.fs, self.model.spec.duration_s)
                targets[i] = records[record]
        if direct.any():
            targets[direct] = amplitudes[direct]
        return targets

    def lead_amplitude_source(self, sampler: SamplerConfig, experience: str = "auto") -> str:
        """Where `generate(..., sampler, experience)` takes each lead's amplitude from: 'retrieved' or 'model'
        (`sampler.lead_amplitudes`, with 'auto' resolved for this model)."""
        return amplitude_source(sampler.lead_amplitudes, experience, self.has_retrieved_amplitudes)

    @property
    def has_retrieved_amplitudes(self) -> bool:
        """Whether the model's profile corpus is at hand with lead amplitudes at the model's rate (what
        `lead_amplitudes='auto'` needs to draw them)."""
        if self.prompt_experience is None:
            return False
        return self.prompt_experience.index.corpus.has_amplitudes_at(self.model.fs)

    def retrieved_amplitudes(self, prompts: Sequence[Prompt], seed: int = 0) -> np.ndarray:
        """(n, 12) mV: per prompt the lead amplitudes of one of its retrieved neighbours (drawn with `seed`; see
        `amplitudes.draw_neighbour_amplitudes`), NaN where the prompt names nothing the corpus knows. Raises
        CheckpointError when the model has no profile corpus or its corpus has no amplitudes at the model's rate."""
        if self.experience_error is not None:
            raise self.experience_error
        if self.prompt_experience is None:
            raise CheckpointError(f"{self.model.source}: lead amplitudes are drawn from the retrieved patients' "
                                  "profiles, and this model was trained without experience (no corpus); use "
                                  "lead_amplitudes='model'")
        corpus = self.prompt_experience.index.corpus
        path = experience_profiles_path(self.model)
        if not corpus.has_amplitudes:
            raise CheckpointError(f"{path}: the profile corpus has no lead amplitudes; rebuild it with "
                                  f"experiments.build_experience --amplitude_fs={self.model.fs:g}, or use "
                                  "lead_amplitudes='model'")
        if not corpus.has_amplitudes_at(self.model.fs):
            raise CheckpointError(f"{path}: lead amplitudes were measured at {corpus.amplitude_fs:g} Hz, the model "
                                  f"generates at {self.model.fs:g} Hz; rebuild the corpus with --amplitude_fs="
                                  f"{self.model.fs:g}")
        rows = [self.prompt_experience.neighbours(p.text, p.age, p.sex_code).rows for p in prompts]
        return draw_neighbour_amplitudes([corpus.amplitudes[r] for r in rows], seed)

    def _generate_batch(self, prompts, plans, keys, sampler, experience, progress, amplitudes=None) -> np.ndarray:
        n = len(prompts)
        devices = self.mesh.devices.size
        padded = math.ceil(n / devices) * devices
        if amplitudes is not None:
            amplitudes = np.concatenate([amplitudes, np.repeat(amplitudes[-1:], padded - n, axis=0)])
        batch = self.conditions(prompts + [prompts[-1]] * (padded - n), experience,
                                list(plans) + [plans[-1]] * (padded - n), amplitudes)
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], padded - n, axis=0)])
        data = batch_sharding(self.mesh)
        batch = jax.device_put(batch, data)
        keys = jax.device_put(keys, data)
        x = jax.device_put(initial_latents(keys, (padded, *self.latent_shape)), data)
        total = sampler.num_steps
        first = 0
        while first < total:
            count = min(self.chunk_steps, total - first)
            last = first + count == total
            x = self._runner(sampler, count, last)(self.params, batch, x, keys, jnp.int32(first))
            first += count
            if progress is not None:
                jax.block_until_ready(x)
                progress(count)
        return np.asarray(jax.device_get(x), np.float32)[:n]
