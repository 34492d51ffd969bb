"""Helpers shared by the numerics tests (they import torch and diffusers; server tests do not need
this): the same noise on both sides, diffusers' reference schedulers with the SD 1.5 scheduler
config and the relative error they are held to, and one parity run of our SD pipeline
(``run_ours``) and of diffusers' StableDiffusionInpaintPipeline (``load_pipeline``,
``run_diffusers``).

Used by tests/models/ (test_sd_pipeline.py, test_sd_tiny_vae.py, test_schedulers.py,
test_fast_schedulers.py) and tests/export/ (test_export_custom_text_encoder.py,
test_lora_export.py); import it after ``pytest.importorskip("torch")`` / ``("diffusers")``.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    TCDScheduler,
)
from diffusers.schedulers import scheduling_lms_discrete
from PIL import Image

from server.models.base import Row


class TorchNoise:
    """NoiseSource drawing exactly what ``torch.Generator().manual_seed(seed)`` gives diffusers,
    so our pipeline/schedulers and diffusers consume identical random numbers."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def randn(self, shape):
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32).numpy()


# ---------------------------------------------------------------- diffusers' schedulers

DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
REF = {
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "lms": (scheduling_lms_discrete.LMSDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {**DPMPP, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {**DPMPP, "use_karras_sigmas": True}),
    "lcm": (LCMScheduler, {}),
    "tcd": (TCDScheduler, {}),
}
#: the schedulers whose steps draw noise (from the generator / the row's NoiseSource)
NOISY = ("euler_a", "lcm", "tcd")
#: StableDiffusionInpaintPipeline passes its own ``eta`` (default 0.0) to a scheduler whose
#: ``step`` takes one; our TCD runs at TCDScheduler.step's default gamma, so pass that.
PIPE_KWARGS = {"tcd": {"eta": inspect.signature(TCDScheduler.step).parameters["eta"].default}}
#: runwayml/stable-diffusion-inpainting's scheduler_config.json, as the server reads it
#: (PNDM, epsilon)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "trained_betas": None,
}
#: relative agreement asked of every scheduler sample / x0 (``rel_err``)
SCHEDULER_TOL = 5e-6


def ref_scheduler(name: str, config: dict):
    """diffusers' counterpart of our scheduler ``name``, built from ``config``."""
    cls, kw = REF[name]
    return cls.from_config(config, **kw)


def rel_err(ours: np.ndarray, ref) -> float:
    """max |ours - ref| / max(max |ref|, 1); ``ours`` float32 and of ``ref``'s shape (a torch
    tensor or an array)."""
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1.0))


# ---------------------------------------------------------------- pipeline parity runs

H, W = 64, 96  # non-square, not a multiple of 64 at latent size (8 x 12)
STEPS = 8
SEED = 3
FP32_TOL = 1e-3  # max |ours - diffusers| on [0, 1] images


def inputs(h: int = H, w: int = W, seed: int = 0):
    """uint8 image; float32 mask: a rectangle not aligned to the 8-px latent grid, with soft
    values on two sides (binarized at 0.5 by both pipelines)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[13:45, 21:70] = 1.0
    mask[13:45, 19:21] = 0.7
    mask[45:47, 21:70] = 0.3
    return img, mask


def make_row(img, mask, **kw) -> Row:
    base = dict(prompt="a red cat", negative_prompt="blurry", seed=SEED, steps=STEPS)
    base.update(kw)
    return Row(image=img, mask=mask, **base)


def run_ours(model, row: Row) -> np.ndarray:
    model.prepare([row])
    while not model.is_done(row):
        model.step([row])
    return model.finish_float([row])[0]


def load_pipeline(folder, **kw) -> StableDiffusionInpaintPipeline:
    """diffusers' pipeline from a local folder in float32, without progress bars, with
    ``base_scheduler_config``: the folder's scheduler config, which ``run_diffusers`` swaps from.
    ``kw`` go to ``from_pretrained``."""
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32, **kw)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = dict(pipe.scheduler.config)
    return pipe


def run_diffusers(
    pipe,
    scheduler,
    img,
    mask,
    *,
    prompt,
    negative_prompt,
    guidance,
    strength,
    steps=STEPS,
    output_type="np",
):
    """diffusers' pipeline with our scheduler ``scheduler``'s counterpart and the same seed as
    ``make_row``: the first image as float32 HxWx3 in [0, 1] (``output_type="latent"``: its
    final latents, a float32 (4, h, w) tensor)."""
    pipe.scheduler = ref_scheduler(scheduler, pipe.base_scheduler_config)
    mask_u8 = np.round(mask * 255).astype(np.uint8)
    out = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt,
        image=Image.fromarray(img),
        mask_image=Image.fromarray(mask_u8),
        height=img.shape[0],
        width=img.shape[1],
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength,
        generator=torch.Generator().manual_seed(SEED),
        output_type=output_type,
        **PIPE_KWARGS.get(scheduler, {}),
    )
    return out.images[0]
