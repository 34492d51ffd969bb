"""Sampling recipes the benchmark measures, and the extrapolation of a short run to a long one.

- ``default``: what a user gets without asking for speed: the model's scheduler (SD 1.5's PNDM),
  guidance 7.5 (classifier-free guidance: every UNet call is batch 2), 25 steps. At full size on
  a CPU one image takes minutes, so presets run a few steps and extrapolate (``extrapolate``).
- ``fast``: the few-step recipe of the fast preset (``quality=low`` on a model exported with an
  LCM LoRA): LCM, 4 steps, no guidance (one UNet row per image), TAESD decode.

A recipe travels to the measuring subprocess as ``dataclasses.asdict(recipe)`` plus ``mode``:
``image`` (whole images) or ``unet_step`` (the UNet alone at the recipe's shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: the default recipe's step count (the server's quality=medium/auto, diffusers' docs' example)
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True)
class Recipe:
    """One way to make an image. ``steps`` are the steps actually run; ``extrapolate_to``, when
    set, is the step count the report also gives an (extrapolated, labelled) latency for."""

    name: str  # "default" | "fast" | a preset's own
    width: int
    height: int
    steps: int
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str | None = None  # None: the model's default (PNDM for SD 1.5)
    tiny_vae: bool = False  # decode the final image with TAESD
    #: encode the masked image with TAESD too (ours: a ``--tiny-vae-encode`` manifest; diffusers:
    #: the pipeline built with ``vae=AutoencoderTiny``)
    tiny_vae_encode: bool = False
    extrapolate_to: int | None = None
    repeats: int | None = None  # timed images for this recipe (None: the preset's repeats)

    @property
    def unet_batch(self) -> int:
        """Rows per UNet call for one image: 2 under classifier-free guidance, else 1."""
        return 2 if self.guidance > 1 else 1

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def describe(self) -> str:
        sched = self.scheduler or "model default scheduler"
        parts = [f"{self.size}", f"{self.steps} steps", sched, f"guidance {self.guidance:g}"]
        if self.tiny_vae:
            parts.append("TAESD encode + decode" if self.tiny_vae_encode else "TAESD decode")
        if self.extrapolate_to:
            parts.append(f"extrapolated to {self.extrapolate_to} steps")
        return ", ".join(parts)


def fast(width: int, height: int, steps: int = 4) -> Recipe:
    return Recipe("fast", width, height, steps, guidance=1.0, scheduler="lcm", tiny_vae=True)


def fast_tiny_encode(width: int, height: int, steps: int = 4) -> Recipe:
    return Recipe(
        "fast-tiny-encode",
        width,
        height,
        steps,
        guidance=1.0,
        scheduler="lcm",
        tiny_vae=True,
        tiny_vae_encode=True,
    )


def default(
    width: int,
    height: int,
    steps: int,
    extrapolate_to: int | None = None,
    repeats: int | None = None,
) -> Recipe:
    return Recipe("default", width, height, steps, extrapolate_to=extrapolate_to, repeats=repeats)


def record_fields(cfg: dict[str, Any], mode: str = "image") -> dict[str, Any]:
    """What a measurement record carries of its recipe dict ``cfg`` (``recipe_key`` reads it
    back); ``mode``: "image" (whole images) or "unet_step"."""
    return {
        "recipe": cfg.get("recipe", "default"),
        "scheduler": cfg.get("scheduler"),
        "tiny_vae": bool(cfg.get("tiny_vae")),
        "tiny_vae_encode": bool(cfg.get("tiny_vae_encode")),
        "mode": mode,
        "width": cfg["width"],
        "height": cfg["height"],
        "steps": cfg["steps"],
    }


def recipe_key(rec: dict[str, Any]) -> tuple:
    """What makes two measurements comparable: recipe name, size, steps, guidance, scheduler,
    tiny VAE decode and encode (records of the older presets carry no recipe: they are
    ``default``)."""
    return (
        rec.get("recipe", "default"),
        rec["width"],
        rec["height"],
        rec["steps"],
        float(rec.get("guidance") or DEFAULT_GUIDANCE),
        rec.get("scheduler"),
        bool(rec.get("tiny_vae")),
        bool(rec.get("tiny_vae_encode")),
    )


def extrapolate(
    total_s: float, steps: int, unet_calls: int, per_call_s: float, to_steps: int
) -> dict[str, Any]:
    """Latency of one image at ``to_steps`` from a run of ``steps`` (``unet_calls`` UNet calls,
    ``per_call_s`` per denoising iteration: UNet + scheduler): the fixed stages (text encoder,
    VAE encode/decode, glue) stay, the loop grows by ``to_steps - steps`` iterations (PNDM's
    extra warm-up call is part of the fixed count: calls = steps + (unet_calls - steps))."""
    calls = unet_calls + (to_steps - steps)
    return {
        "steps": to_steps,
        "unet_calls": calls,
        "latency_s": total_s + (to_steps - steps) * per_call_s,
        "how": f"measured {steps} steps ({unet_calls} UNet calls, {total_s:.3f} s) + "
        f"{to_steps - steps} x the measured {per_call_s:.4f} s per denoising iteration",
    }
