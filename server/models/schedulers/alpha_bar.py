"""The alpha-bar family base: schedulers indexed by integer training timestep."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import _ONE, Scheduler, _f32, _per_row, _predicted_x0


class _AlphaBarScheduler(Scheduler):
    """Schedulers indexed directly by integer training timestep (DDIM, PNDM)."""

    def _final_alpha_cumprod(self) -> np.float32:
        return _ONE if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    @classmethod
    def _x0(cls, schedulers, model_output: np.ndarray, ts, sample: np.ndarray) -> np.ndarray:
        """Textbook x0 estimate of stacked rows, row i at integer timestep ``ts[i]``."""
        a = _per_row([s.alphas_cumprod[t] for s, t in zip(schedulers, ts, strict=True)], 4)
        pt = schedulers[0].config["prediction_type"]
        return _predicted_x0(pt, model_output, sample, a, _ONE - a)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        original, noise = _f32(original), _f32(noise)
        idx = np.asarray(timestep).reshape(-1).astype(np.int64)
        a = self.alphas_cumprod[idx]
        sa = _per_row(np.sqrt(a), original.ndim)
        sb = _per_row(np.sqrt(_ONE - a), original.ndim)
        return (sa * original + sb * noise).astype(np.float32)
