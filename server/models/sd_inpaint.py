"""Stable Diffusion inpainting over exported ONNX components (no torch).

Computes what diffusers' ``StableDiffusionInpaintPipeline`` computes (inpainting UNet: latents,
mask and masked-image latents concatenated, 2 x latent + 1 channels, 9 for SD),
split into ``prepare`` / ``step`` / ``finish`` so that a batcher can run many rows, each at its
own timestep, guidance and scheduler, through ONE UNet call per step.

The steps, as in diffusers (numbers match the comments in the code):

1. Validate each row's extension values (steps, guidance, strength, scheduler).
2. Text: tokenize prompt (and negative prompt when guidance > 1: classifier-free guidance, the
   negative defaults to ""), text-encode all unique strings of the batch in one call.
3. Scheduler per row (the row's name or the manifest's config), ``set_timesteps(steps)``, then
   strength: ``strength_timesteps`` keeps the last ``int(steps * strength)`` steps.
4. Image and mask: image uint8 -> float32 [-1, 1]; mask binarized at 0.5;
   masked_image = image * (mask < 0.5); mask resized to latent size by nearest (F.interpolate).
5. VAE-encode (one call for the batch) and draw the random numbers from the row's noise source
   in exactly the order diffusers draws them from its generator:
   strength < 1: image latent sample, initial noise, masked-image latent sample;
   strength = 1: initial noise, masked-image latent sample (the image itself is not encoded).
   Latent sample = mean + std * noise, times the VAE scaling factor. Fast-preset rows of a
   model exported with ``--tiny-vae-encode`` encode with the tiny encoder instead
   (``taesd_encoder``: deterministic latents times its scaling factor, no draw), as diffusers
   with ``vae=AutoencoderTiny`` does.
6. Initial latents: strength 1 -> noise * init_noise_sigma; else add_noise(image latents, noise,
   first timestep).
7. ``step``: UNet input = cat(scaled latents, mask, masked-image latents) (9 channels) for
   every row, then a second (unconditional) copy for each guidance row; one UNet call with a
   per-row timestep vector; guidance combined for all guidance rows at once; rows whose
   schedulers share a ``batch_key`` advance in one ``step_batch`` (each row's noise draws come
   from its own noise source, after those of step 5). The input buffer, text embeddings and
   stacked latents are kept (``_StepBatch``) while the same rows step together. Previews decode
   the scheduler's ``pred_original_sample`` (LCM: ``denoised``) at ``partial_images`` evenly
   spaced steps before the last (fewer when there are not enough steps: ``preview_schedule``).
8. ``finish``: VAE-decode latents / scaling factor; (x / 2 + 0.5) clipped to [0, 1];
   uint8 = round(x * 255). With a tiny autoencoder in the folder (``taesd_decoder``), rows with
   ``row.tiny_vae`` (the fast preset) decode with it instead, as diffusers with
   ``vae=AutoencoderTiny`` does (latents / its own scaling factor), and previews always do.

Noise injection: ``row.meta["noise"]`` may hold any object with ``randn(shape) -> float32``
(``schedulers.NoiseSource``); default ``NumpyNoise(row.seed)``. Tests pass a torch-Generator
backed source to reproduce diffusers with ``generator=torch.Generator().manual_seed(seed)``.
``row.meta["latents"]`` is not supported: inject noise instead.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..protocol import ProtocolError, Range
from .base import Row
from .capabilities import Capabilities, ModelLimits, Preset, Sampling, Settings
from .manifest import Manifest
from .providers import ExecutionProvider, select_provider
from .schedulers import (
    NumpyNoise,
    batch_groups,
    default_scheduler_name,
    make_scheduler,
    scheduler_names,
    strength_timesteps,
)
from .tokenizer import CLIPTokenizer

#: The sampling knobs of SD inpainting models (declared once: serving, /v1/models and
#: /openapi.json read them through ``SDInpaintModel.capabilities``). Guidance <= 1 = no CFG.
STEPS = Range(1, 150, integer=True)
GUIDANCE_SCALE = Range(0, 30)
STRENGTH = Range(0, 1, lo_exclusive=True)  # 1 = repaint fully; 0 would leave no step
DEFAULT_GUIDANCE = 7.5
QUALITY_PRESETS = {"low": Preset(12), "medium": Preset(25), "high": Preset(50)}
#: the tiny-autoencoder components: the fast preset decodes with the decoder when present, and
#: encodes with the encoder when its manifest entry says so (``FastPreset.tiny_vae_encode``)
TINY_VAE_DECODER = "taesd_decoder"
TINY_VAE_ENCODER = "taesd_encoder"


def quality_presets(manifest: Manifest) -> dict[str, Preset]:
    """``QUALITY_PRESETS`` with "low" replaced by the model's few-step fast preset when its
    manifest has one (``python -m export --lora`` / ``--fast-preset``): its scheduler, steps and
    guidance, decoded with the tiny autoencoder when the folder has one. ValueError (saying how to
    fix the export) when the preset is outside what this server runs."""
    fast = manifest.fast_preset
    if fast is None:
        return dict(QUALITY_PRESETS)
    if fast.scheduler not in scheduler_names():
        raise ValueError(
            f"manifest fast_preset names scheduler {fast.scheduler!r}, which this server does not "
            f"have ({', '.join(scheduler_names())}); re-export with --fast-preset NAME:STEPS:GUIDANCE"
        )
    STEPS.check("steps", fast.steps)
    GUIDANCE_SCALE.check("guidance_scale", fast.guidance_scale)
    if fast.tiny_vae_encode and TINY_VAE_ENCODER not in manifest.components:
        raise ValueError(
            f"manifest fast_preset encodes with the tiny autoencoder, but the folder has no "
            f"{TINY_VAE_ENCODER}; re-export with --tiny-vae PATH_OR_HUB_ID --tiny-vae-encode"
        )
    tiny = TINY_VAE_DECODER in manifest.components
    low = Preset(fast.steps, fast.scheduler, fast.guidance_scale, tiny_vae=tiny)
    return {**QUALITY_PRESETS, "low": low}


@dataclass
class _RowState:
    """Per-row denoising state (filled by ``prepare``). Arrays are float32 NCHW, batch 1."""

    uid: int
    scheduler: Any
    timesteps: np.ndarray  # the timesteps this row runs (after strength)
    latents: np.ndarray  # (1, 4, h, w)
    mask: np.ndarray  # (1, 1, h, w), 0/1
    masked_latents: np.ndarray  # (1, 4, h, w), scaled
    cond: np.ndarray  # (1, text length, hidden)
    uncond: np.ndarray | None  # (1, text length, hidden) when guidance applies
    guidance: float
    noise: Any
    index: int = 0  # UNet calls done
    #: step count (1-based, after which) -> preview indices to emit
    previews: dict[int, list[int]] = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.uncond is not None


@dataclass
class _StepBatch:
    """What the rows stepping together reuse at every step until the set of rows changes.

    Batch order: the rows sorted by their scheduler's ``config_key`` (stable), so that rows one
    ``step_batch`` call can advance are adjacent (slices, not gathers). UNet rows: every row's
    conditional input (B), then an unconditional copy for each guidance row (C): with guidance
    on every row the combine is two slices, without it one.
    """

    uids: tuple[int, ...]  # of the rows in the caller's order
    order: list[int]  # batch position -> index in the caller's list
    states: list[_RowState]  # in batch order
    latents: np.ndarray  # (B, 4, h, w) float32; each state's ``latents`` is a view of its row
    sample: np.ndarray  # (B + C, 9, h, w) float32 UNet input; mask channels written once
    timestep: np.ndarray  # (B + C,) float32
    cfg: slice | np.ndarray  # the guidance rows: all of them (a slice: views) or an index array
    guidance: np.ndarray  # (C, 1, 1, 1) float32, their guidance scales
    text: Any  # encoder_hidden_states [cond x B, uncond x C] as a session device handle

    def holds(self, rows: list[Row]) -> bool:
        """Same rows, and no row's latents replaced since (each still a view of ours)."""
        return self.uids == tuple(r.state.uid for r in rows) and all(
            r.state.latents.base is self.latents for r in rows
        )


def preview_schedule(total: int, k: int) -> dict[int, list[int]]:
    """Up to k previews evenly spaced over ``total`` steps: {step number (1-based): [preview
    idx]}, one preview per step.

    Only distinct previews are sent: each comes after its own step, and before the last one
    (whose estimate is the final image). So there are m = min(k, total - 1) of them, preview j
    after step round((j + 1) * total / (m + 1)); fewer than asked when there are not enough
    steps (none with one step), as OpenAI allows.
    """
    m = max(0, min(k, total - 1))
    # the spacing total / (m + 1) is >= 1, so the rounded steps are distinct and in [1, total)
    return {round((j + 1) * total / (m + 1)): [j] for j in range(m)}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, as diffusers' numpy_to_pil: round(x * 255)."""
    return (images * 255).round().astype(np.uint8)


class SDInpaintModel:
    """Stable Diffusion inpainting over ONNX; implements ``DiffusionModel``."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        provider: ExecutionProvider,
        *,
        name: str,
    ):
        self.folder = Path(folder)
        self.manifest = manifest
        self.provider = provider
        self.name = name
        native = int(manifest.native_resolution)
        limits = ModelLimits(
            min_side=64,
            max_side=4096,
            native_side=native,
            max_work_side=int(round(native * 1.5 / 8)) * 8,
            multiple=8,
        )
        self.vae_scale = int(manifest.vae_scale_factor)
        self.scaling = float(manifest.latent_scaling_factor)
        # StableDiffusionInpaintPipeline.__init__ rewrites outdated scheduler configs the same
        # way (steps_offset 1, PNDM without the PRK warm-up); do it too so defaults match.
        self.scheduler_config = {**manifest.scheduler}
        if self.scheduler_config.get("steps_offset", 1) != 1:
            self.scheduler_config["steps_offset"] = 1
        if self.scheduler_config.get("skip_prk_steps", True) is False:
            self.scheduler_config["skip_prk_steps"] = True
        self.capabilities = Capabilities(
            limits=limits,
            reads_prompt=True,
            streams_previews=True,
            sampling=Sampling(
                steps=STEPS,
                guidance_scale=GUIDANCE_SCALE,
                strength=STRENGTH,
                schedulers=tuple(scheduler_names()),
                default_scheduler=default_scheduler_name(self.scheduler_config),
                default_guidance_scale=DEFAULT_GUIDANCE,
                quality_presets=quality_presets(manifest),
                max_steps=self._scheduler_step_limits(),
            ),
        )
        self.tokenizer = CLIPTokenizer(self._tokenizer_dir(), max_length=manifest.text_max_length)
        self.sessions = {
            comp: provider.load(self.folder / spec.file, spec)
            for comp, spec in manifest.components.items()
        }
        for comp in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
            if comp not in self.sessions:
                raise ValueError(f"{folder}: manifest lacks component {comp!r}; re-export")
        #: fast-preset rows (``row.tiny_vae``) encode with the tiny encoder (quality_presets
        #: has checked that the folder has it)
        self.tiny_encode = bool(manifest.fast_preset and manifest.fast_preset.tiny_vae_encode)
        self._uids = itertools.count()
        # the kept step arrays, one set per thread: each batching loop (model instance) steps
        # its own rows, and all of them share this object and its sessions
        self._local = threading.local()

    @classmethod
    def from_folder(
        cls,
        folder: Path,
        *,
        name: str,
        provider: str = "auto",
        threads: int | None = None,
        instances: int = 1,
        static_shapes: int | None = None,
        amx_attention: str = "auto",
    ) -> SDInpaintModel:
        manifest = Manifest.read(Path(folder))
        inpainting = manifest.unet_in_channels == 2 * manifest.latent_channels + 1
        if manifest.pipeline != "sd-inpaint" or not inpainting:
            raise ValueError(f"{folder}: not an SD inpainting export (UNet in-channels)")
        engine = select_provider(
            provider,
            threads=threads,
            streams=instances,
            static_shapes=static_shapes,
            amx_attention=amx_attention,
        )
        return cls(folder, manifest, engine, name=name)

    def _tokenizer_dir(self) -> Path:
        files = self.manifest.tokenizer
        rel = files.get("tokenizer_json") or files.get("vocab") or "tokenizer/vocab.json"
        return (self.folder / rel).parent

    # ------------------------------------------------------------------ metadata

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "diffusion",
            "pipeline": "stable-diffusion-inpaint",
            "precision": self.manifest.precision,
            "provider": self.provider.describe(),
            "source": self.manifest.source.model,
            # the tiny autoencoder's source when one was exported (previews use it), else None
            "tiny_vae": self._tiny_vae_source(),
            # whether quality=low also encodes with it (else the full VAE encodes)
            "tiny_vae_encode": self.tiny_encode,
            # LoRAs fused into the weights at export (python -m export --lora), in order
            "loras": [{"source": x.source, "scale": x.scale} for x in self.manifest.loras],
        }

    def count_tokens(self, prompt: str) -> int:
        return self.tokenizer.count(prompt)

    def batch_key(self, row: Row) -> tuple:
        """Latent size: rows with and without guidance, any scheduler, may share a UNet call."""
        h, w = row.image.shape[:2]
        return ("sd-inpaint", h // self.vae_scale, w // self.vae_scale)

    def close(self) -> None:
        self.sessions.clear()
        self._local = threading.local()

    def probe(self) -> Callable[[], Any]:
        """One UNet call as one guided request at the native size runs it (2 rows: the
        conditional and unconditional halves): what ``instances.choose`` times."""
        spec = self.manifest.components["unet"]
        side = self.capabilities.limits.native_side // self.vae_scale
        rng = np.random.default_rng(0)
        feeds = {}
        for t in spec.inputs:  # batch axis first; the named spatial axes are the latent's
            shape = [2] + [side if isinstance(d, str) else int(d) for d in t.shape[1:]]
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        feeds["timestep"] = np.full(feeds["timestep"].shape, 500.0, np.float32)
        return lambda: self._run("unet", feeds)

    # ------------------------------------------------------------------ 1. validation

    def validate(self, row: Row) -> Settings:
        """The row's sampling settings (defaults applied); ``ProtocolError`` for out-of-range
        values (the same check serving runs on requests), ``ValueError`` for bad arrays."""
        sampling = self.capabilities.sampling
        settings = sampling.resolve(
            steps=row.steps,
            guidance_scale=row.guidance_scale,
            strength=row.strength,
            scheduler=row.scheduler,
        )
        h, w = row.image.shape[:2]
        if row.image.ndim != 3 or row.image.shape[2] != 3 or row.image.dtype != np.uint8:
            raise ValueError("image must be uint8 HxWx3 RGB")
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"image sides must be multiples of {self.vae_scale}, got {w}x{h}")
        if row.mask.shape != (h, w):
            raise ValueError(f"mask must be HxW = {h}x{w}, got {row.mask.shape}")
        self._schedule(settings)  # scheduler-specific limits (LCM / TCD: at most 50 steps)
        return settings

    def _scheduler_step_limits(self) -> dict[str, int]:
        """Schedulers that run fewer steps than ``STEPS`` allows, and their limits."""
        limits = {
            name: make_scheduler(self.scheduler_config, name).max_steps
            for name in scheduler_names()
        }
        return {name: n for name, n in limits.items() if n < STEPS.hi}

    def _schedule(self, settings: Settings) -> tuple[Any, np.ndarray]:
        """3. The row's scheduler and the timesteps it runs; ``ProtocolError`` on ``steps``
        when the scheduler cannot run that many."""
        sched = make_scheduler(self.scheduler_config, settings.scheduler)
        try:
            ts = np.asarray(strength_timesteps(sched, settings.steps, settings.strength))
        except ValueError as exc:
            raise ProtocolError(f"{exc}.", "steps") from exc
        return sched, ts

    # ------------------------------------------------------------------ helpers

    def _run(self, component: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        spec = self.manifest.components[component]
        dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        cast = {
            k: (v.astype(dtypes[k], copy=False) if isinstance(v, np.ndarray) and k in dtypes else v)
            for k, v in feeds.items()
        }
        return self.sessions[component].run(cast)

    def _encode_text(self, texts: list[str]) -> dict[str, np.ndarray]:
        """2. Unique texts -> {text: float32 (1, text length, hidden)} with one encoder call."""
        unique = list(dict.fromkeys(texts))
        ids = self.tokenizer.encode(unique)
        hidden = self._run("text_encoder", {"input_ids": ids})["last_hidden_state"]
        return {t: hidden[i : i + 1].astype(np.float32) for i, t in enumerate(unique)}

    @property
    def has_tiny_vae(self) -> bool:
        """Whether the folder has a tiny autoencoder decoder (``python -m export --tiny-vae``)."""
        return TINY_VAE_DECODER in self.sessions

    def _tiny_vae_source(self) -> str | None:
        if not self.has_tiny_vae:
            return None
        tiny = self.manifest.tiny_vae
        return tiny.source.model if tiny is not None else "unknown"

    @property
    def _tiny_scaling(self) -> np.float32:
        """The tiny autoencoder's latent scaling factor (TAESD's: 1.0, its latents are the
        UNet's); 1.0 for folders exported before the manifest recorded it."""
        tiny = self.manifest.tiny_vae
        return np.float32(tiny.scaling_factor if tiny is not None else 1.0)

    def _decode(self, latents: np.ndarray, tiny: bool = False) -> np.ndarray:
        """8. UNet-scaled latents float32 (B, 4, h, w) -> float32 (B, H, W, 3) in [0, 1].

        ``tiny``: with ``taesd_decoder`` instead of ``vae_decoder``. Each decoder takes the
        latents divided by its own VAE's scaling factor, as diffusers' pipeline does with
        ``vae=AutoencoderTiny`` (TAESD's is 1.0: it decodes the UNet's latents as they are)."""
        if tiny:
            out = self._run(TINY_VAE_DECODER, {"latent_sample": latents / self._tiny_scaling})
        else:
            out = self._run("vae_decoder", {"latent_sample": latents / self.scaling})
        out = np.clip(out["sample"].astype(np.float32) / 2 + 0.5, 0, 1)
        return out.transpose(0, 2, 3, 1)

    # ------------------------------------------------------------------ prepare

    def prepare(self, rows: list[Row]) -> None:
        """Fill ``row.state`` for every row (batched text and VAE encoding)."""
        if not rows:
            return
        # 1. validate everything first: a bad row must not leave others half prepared
        settings = [self.validate(row) for row in rows]
        cfgs = [st.guidance_scale > 1.0 for st in settings]

        # 2. text embeddings for prompts and (guidance rows) negative prompts
        texts = []
        for row, cfg in zip(rows, cfgs, strict=True):
            texts.append(row.prompt or "")
            if cfg:
                texts.append(row.negative_prompt or "")
        emb = self._encode_text(texts)

        # 3. schedulers and timesteps
        scheds, timesteps = [], []
        for st in settings:
            sched, ts = self._schedule(st)
            scheds.append(sched)
            timesteps.append(ts)

        # 4. image, binarized mask, masked image, latent-size mask
        images, masked, masks = [], [], []
        for row in rows:
            img = row.image.astype(np.float32) / np.float32(255.0)
            img = (2.0 * img - 1.0).transpose(2, 0, 1)[None]  # (1, 3, H, W) in [-1, 1]
            m = np.asarray(row.mask, dtype=np.float32)
            m = np.where(m < 0.5, 0.0, 1.0).astype(np.float32)[None, None]  # (1, 1, H, W)
            images.append(img)
            masked.append(img * (m < 0.5))
            # F.interpolate(mode="nearest") to (H/8, W/8): source index floor(i * 8)
            masks.append(np.ascontiguousarray(m[:, :, :: self.vae_scale, :: self.vae_scale]))

        # 5. one encoder call per encoder and image size: images of strength < 1 rows, masked
        #    images; fast-preset rows encode with the tiny encoder when the preset says so
        partial = [i for i, st in enumerate(settings) if st.strength < 1.0]
        tiny = [bool(row.tiny_vae) and self.tiny_encode for row in rows]
        moments = self._encode(
            [images[i] for i in partial] + masked, [tiny[i] for i in partial] + tiny
        )
        img_moments = dict(zip(partial, moments[: len(partial)], strict=True))
        masked_moments = moments[len(partial) :]
        for i, row in enumerate(rows):
            strength, g, cfg = settings[i].strength, settings[i].guidance_scale, cfgs[i]
            noise_src = row.meta.get("noise")
            if noise_src is None:
                noise_src = NumpyNoise(row.seed)
            sched, ts = scheds[i], timesteps[i]
            shape = masked_moments[i][0].shape
            if strength < 1.0:
                image_latents = self._sample(img_moments[i], noise_src)
                noise = self._randn(noise_src, shape)
                # 6. initial latents = image latents noised to the first timestep
                latents = sched.add_noise(image_latents, noise, np.asarray(ts[:1]))
            else:
                noise = self._randn(noise_src, shape)
                latents = noise * np.float32(sched.init_noise_sigma)
            masked_latents = self._sample(masked_moments[i], noise_src)
            state = _RowState(
                uid=next(self._uids),
                scheduler=sched,
                timesteps=ts,
                latents=np.asarray(latents, dtype=np.float32),
                mask=masks[i],
                masked_latents=masked_latents.astype(np.float32),
                cond=emb[row.prompt or ""],
                uncond=emb[row.negative_prompt or ""] if cfg else None,
                guidance=g,
                noise=noise_src,
                previews=preview_schedule(len(ts), int(row.partial_images))
                if row.on_preview is not None
                else {},
            )
            row.state = state

    def _encode(
        self, images: list[np.ndarray], tiny: list[bool]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(1, 3, H, W) images in [-1, 1] -> per image (mean, std) from the full VAE, unscaled,
        or, where ``tiny``, (UNet-scaled latents, None) from the tiny encoder (``_sample``)."""
        full = [k for k, t in enumerate(tiny) if not t]
        small = [k for k, t in enumerate(tiny) if t]
        out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        out.update(zip(full, self._vae_encode([images[k] for k in full]), strict=True))
        small_latents = self._tiny_vae_encode([images[k] for k in small])
        out.update((k, (lat, None)) for k, lat in zip(small, small_latents, strict=True))
        return [out[k] for k in range(len(images))]

    def _sample(self, moments: tuple[np.ndarray, np.ndarray | None], noise: Any) -> np.ndarray:
        """UNet-scaled latents from ``_encode``'s entry: the full VAE's latent_dist.sample(),
        drawing from the row's noise source in diffusers' order; the tiny encoder's latents as
        they are (deterministic: diffusers draws nothing for them either)."""
        mean, std = moments
        if std is None:
            return mean
        return self.scaling * (mean + std * self._randn(noise, mean.shape))

    def _tiny_vae_encode(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """(1, 3, H, W) images in [-1, 1] -> UNet-scaled latents (1, 4, h, w) each: the tiny
        encoder's output times its VAE's scaling factor (TAESD's is 1.0), as diffusers'
        pipeline scales ``vae.encode(x).latents``."""
        outs = self._encode_by_size(TINY_VAE_ENCODER, images)
        return [o["latent_sample"] * self._tiny_scaling for o in outs]

    def _vae_encode(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(1, 3, H, W) images in [-1, 1] -> [(mean, std)] each (1, 4, h, w), unscaled."""
        outs = self._encode_by_size("vae_encoder", images)
        return [(o["latent_mean"], o["latent_std"]) for o in outs]

    def _encode_by_size(self, component: str, images: list[np.ndarray]) -> list[dict]:
        """Run an encoder ``component`` on (1, 3, H, W) images, one call per distinct image
        size; per image, its float32 (1, ...) slice of every output, by output name."""
        out: dict[int, dict[str, np.ndarray]] = {}
        for group in _group_by_shape(list(enumerate(images)), lambda p: p[1].shape):
            res = self._run(component, {"sample": np.concatenate([x for _, x in group])})
            res = {name: v.astype(np.float32) for name, v in res.items()}
            for k, (i, _) in enumerate(group):
                out[i] = {name: v[k : k + 1] for name, v in res.items()}
        return [out[i] for i in range(len(images))]

    @staticmethod
    def _randn(source: Any, shape: tuple) -> np.ndarray:
        return np.asarray(source.randn(tuple(shape)), dtype=np.float32).reshape(shape)

    # ------------------------------------------------------------------ step

    def is_done(self, row: Row) -> bool:
        st: _RowState = row.state
        return st is not None and st.index >= len(st.timesteps)

    def step(self, rows: list[Row]) -> None:
        """7. One UNet call over all (not yet done) rows; rows whose schedulers share a
        ``batch_key`` advance together in one ``step_batch``."""
        rows = [r for r in rows if not self.is_done(r)]
        if not rows:
            return
        b = self._step_batch(rows)
        rows = [rows[i] for i in b.order]
        states, n_rows, c = b.states, len(rows), b.latents.shape[1]
        scheds = [st.scheduler for st in states]
        ts = [st.timesteps[st.index] for st in states]
        groups = batch_groups(scheds, ts)
        for sel, idx in groups:
            group = [scheds[i] for i in idx]
            tg = [ts[i] for i in idx]
            b.sample[sel, :c] = type(group[0]).scale_model_input_batch(group, b.latents[sel], tg)
        b.timestep[:n_rows] = ts
        uncond_rows = len(b.timestep) - n_rows
        if uncond_rows:  # the unconditional copies of the guidance rows
            b.sample[n_rows:, :c] = b.sample[b.cfg, :c]
            b.timestep[n_rows:] = b.timestep[b.cfg]
        feeds = {"sample": b.sample, "timestep": b.timestep, "encoder_hidden_states": b.text}
        pred = self._run("unet", feeds)["out_sample"].astype(np.float32, copy=False)
        eps = pred[:n_rows]
        if uncond_rows:  # classifier-free guidance
            uncond = pred[n_rows:]
            guided = uncond + b.guidance * (eps[b.cfg] - uncond)
            if uncond_rows == n_rows:
                eps = guided
            else:
                eps[b.cfg] = guided

        previews: list[tuple[Row, list[int], np.ndarray]] = []
        for sel, idx in groups:
            group = [scheds[i] for i in idx]
            noises = [states[i].noise for i in idx]
            tg = [ts[i] for i in idx]
            out = type(group[0]).step_batch(group, eps[sel], tg, b.latents[sel], noises)
            b.latents[sel] = out.prev_sample
            for j, i in enumerate(idx):
                st = states[i]
                st.index += 1
                wanted = st.previews.get(st.index)
                if wanted and rows[i].on_preview is not None:
                    x0 = out.pred_original_sample
                    x0 = st.latents if x0 is None else _f32(x0[j : j + 1]).copy()
                    previews.append((rows[i], wanted, x0))
        if previews:
            self._emit_previews(previews)

    def _step_batch(self, rows: list[Row]) -> _StepBatch:
        """The kept arrays for these rows, rebuilt when the rows change (a row joined or left).

        Rebuilding copies each row's latents once into the stacked array (the rows' ``latents``
        become views of it), writes the mask channels of the UNet input and uploads the text
        embeddings (``session.to_device``: once per batch on CUDA, not once per step).
        """
        kept: _StepBatch | None = getattr(self._local, "batch", None)
        if kept is not None and kept.holds(rows):
            return kept
        self._local.batch = None  # free the old arrays before allocating the new ones
        order = sorted(range(len(rows)), key=lambda i: rows[i].state.scheduler.config_key)
        states: list[_RowState] = [rows[i].state for i in order]
        n_rows = len(states)
        guided = [i for i, st in enumerate(states) if st.cfg]
        cfg = slice(0, n_rows) if len(guided) == n_rows else np.asarray(guided, dtype=np.int64)
        latents = _f32(np.concatenate([st.latents for st in states], axis=0))
        for i, st in enumerate(states):
            st.latents = latents[i : i + 1]
        c, h, w = latents.shape[1:]
        extra = np.concatenate(
            [np.concatenate([st.mask, st.masked_latents], axis=1) for st in states], axis=0
        )
        sample = np.empty((n_rows + len(guided), c + extra.shape[1], h, w), np.float32)
        sample[:n_rows, c:] = extra
        sample[n_rows:, c:] = extra[cfg]
        text = [st.cond for st in states] + [states[i].uncond for i in guided]
        self._local.batch = _StepBatch(
            uids=tuple(r.state.uid for r in rows),
            order=order,
            states=states,
            latents=latents,
            sample=sample,
            timestep=np.empty(n_rows + len(guided), np.float32),
            cfg=cfg,
            guidance=_f32([states[i].guidance for i in guided]).reshape(-1, 1, 1, 1),
            text=self.sessions["unet"].to_device(np.concatenate(text, axis=0).astype(np.float32)),
        )
        return self._local.batch

    def _emit_previews(self, previews: list[tuple[Row, list[int], np.ndarray]]) -> None:
        """Decode previews with the tiny autoencoder whenever the folder has one: a preview is
        a rough look at the current estimate, and TAESD's decoder does 1/18 of the full VAE
        decoder's arithmetic (141 vs 2515 GFLOP at 512x512; benchmarks/taesd_quality.py)."""
        for group in _group_by_shape(previews, lambda p: p[2].shape):
            latents = np.concatenate([p[2] for p in group], axis=0)
            images = to_uint8(self._decode(latents, tiny=self.has_tiny_vae))
            for (row, indices, _), img in zip(group, images, strict=True):
                for j in indices:
                    row.on_preview(j, img)

    # ------------------------------------------------------------------ finish

    def finish_float(self, rows: list[Row]) -> list[np.ndarray]:
        """8. VAE-decode: one float32 HxWx3 image in [0, 1] per row (diffusers' output_type="np").

        Rows with ``row.tiny_vae`` (the fast preset) decode with the tiny autoencoder when the
        folder has one, the others with the full VAE: one decoder call per (size, decoder)."""
        out: dict[int, np.ndarray] = {}
        indexed = list(enumerate(rows))

        def key(p):
            return p[1].state.latents.shape, bool(p[1].tiny_vae and self.has_tiny_vae)

        for group in _group_by_shape(indexed, key):
            lat = np.concatenate([r.state.latents for _, r in group], axis=0)
            decoded = self._decode(lat, tiny=True) if key(group[0])[1] else self._decode(lat)
            for (i, _), img in zip(group, decoded, strict=True):
                out[i] = img
        return [out[i] for i in range(len(rows))]

    def finish(self, rows: list[Row]) -> list[np.ndarray | Exception]:
        """One uint8 HxWx3 image per row, same HxW as the row's image.

        A row whose decoded image is not finite (NaN/inf from the graphs, e.g. an fp16
        overflow) gets an exception in its place, so the batcher fails that row's request
        alone instead of returning a garbage image.
        """
        return [
            to_uint8(x)
            if np.isfinite(x).all()
            else FloatingPointError("the model produced non-finite values for this image")
            for x in self.finish_float(rows)
        ]

    def run(self, rows: list[Row]) -> list[np.ndarray]:
        """prepare + step until done + finish (rows of different sizes run as separate groups)."""
        out: dict[int, np.ndarray] = {}
        indexed = list(enumerate(rows))
        for group in _group_by_shape(indexed, lambda p: self.batch_key(p[1])):
            grows = [r for _, r in group]
            self.prepare(grows)
            while not all(self.is_done(r) for r in grows):
                self.step(grows)
            for (i, _), img in zip(group, self.finish(grows), strict=True):
                if isinstance(img, Exception):
                    raise img
                out[i] = img
        return [out[i] for i in range(len(rows))]


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _group_by_shape(items: list, key) -> list[list]:
    groups: dict[Any, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())
