"""The model interface every served model implements, whatever runs it.

Conventions (the same everywhere in the server):
- images are ``uint8`` H x W x 3 RGB numpy arrays;
- masks are ``float32`` H x W arrays in [0, 1] where 1 means "edit this pixel";
- a *row* is one output image: a request with ``n=3`` becomes three rows with seeds
  ``seed, seed + 1, seed + 2``.

Every model declares its ``capabilities`` once (``capabilities.py``). Two shapes exist:
- ``SinglePassModel``: one call turns a batch of rows into images (the built-in OpenCV model).
- ``DiffusionModel``: work is split into ``prepare`` / ``step`` / ``finish`` (``StepwiseModel``)
  so that the batcher can advance many rows one denoising step at a time and let new rows join
  between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .capabilities import Capabilities, ModelLimits

__all__ = [
    "Capabilities",
    "ModelLimits",
    "Row",
    "InpaintModel",
    "SinglePassModel",
    "StepwiseModel",
    "DiffusionModel",
]

#: Called with (partial image index 0..partial_images-1, preview uint8 HxWx3) while streaming.
PreviewCallback = Callable[[int, np.ndarray], None]


@dataclass
class Row:
    """One image to produce.

    image: uint8 HxWx3 RGB at the working size (both sides multiples of 8).
    mask: float32 HxW in [0, 1], 1 = edit; same HxW as ``image``.
    """

    image: np.ndarray
    mask: np.ndarray
    prompt: str
    seed: int
    negative_prompt: str | None = None
    #: sampling values (None = the model's default); serving passes values already checked
    #: against the model's ``capabilities``.
    steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    scheduler: str | None = None
    #: decode the final image with the tiny autoencoder (the fast preset), when the model has one
    tiny_vae: bool = False
    #: number of partial previews wanted (0..3); the model calls ``on_preview`` at most that many
    #: times, once per distinct preview (fewer when it has not enough steps).
    partial_images: int = 0
    on_preview: PreviewCallback | None = None
    #: called by the step-level batcher after each denoising step of this row, in the model's
    #: worker thread (async jobs count progress with it); must be quick and must not raise
    on_step: Callable[[], None] | None = None
    #: free slot for the model's per-row state (scheduler, latents...).
    state: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class InpaintModel(Protocol):
    name: str
    #: what it accepts and produces, declared once (ranges, sizes, presets...)
    capabilities: Capabilities

    def describe(self) -> dict[str, Any]:
        """Metadata for ``GET /v1/models`` beyond the capabilities: what it is, how it runs."""
        ...

    def count_tokens(self, prompt: str) -> int:
        """Prompt tokens as the model's tokenizer counts them (for ``usage``)."""
        ...

    def close(self) -> None: ...


class SinglePassModel(InpaintModel, Protocol):
    def run(self, rows: list[Row]) -> list[np.ndarray]:
        """Return one uint8 HxWx3 image per row, same HxW as the row's image. Blocking."""
        ...


@runtime_checkable
class StepwiseModel(Protocol):
    """The stepping interface the step-level batcher drives (a model without it is driven by
    the single-pass batcher through ``run``)."""

    def batch_key(self, row: Row) -> tuple:
        """Rows with equal keys may share UNet calls (same latent size, same dtype...)."""
        ...

    def prepare(self, rows: list[Row]) -> None:
        """Text-encode, VAE-encode, set up each row's scheduler; fills ``row.state``."""
        ...

    def step(self, rows: list[Row]) -> None:
        """Advance every row one denoising step with one batched UNet call.

        Rows may be at different timesteps and use different guidance scales.
        """
        ...

    def is_done(self, row: Row) -> bool: ...

    def finish(self, rows: list[Row]) -> list[np.ndarray]:
        """VAE-decode finished rows: one uint8 HxWx3 image per row."""
        ...


class DiffusionModel(InpaintModel, StepwiseModel, Protocol):
    def run(self, rows: list[Row]) -> list[np.ndarray]:
        """prepare + step until done + finish, for callers without a batcher."""
        ...
