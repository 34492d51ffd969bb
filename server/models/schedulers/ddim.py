"""DDIM (diffusers' ``DDIMScheduler``), eta = 0."""

from __future__ import annotations

import numpy as np

from .alpha_bar import _AlphaBarScheduler
from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    _ZERO,
    StepOutput,
    _as_int,
    _clip_x0,
    _f32,
    _per_row,
    _predicted_eps,
    _predicted_x0,
)


class DDIM(_AlphaBarScheduler):
    diffusers_class = "DDIMScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        c = self.config
        big_t = int(c["num_train_timesteps"])
        sp = c["timestep_spacing"]
        if sp == "linspace":
            ts = np.linspace(0, big_t - 1, n).round()[::-1].astype(np.int64)
        elif sp == "leading":
            ts = (np.arange(0, n) * (big_t // n)).round()[::-1].astype(np.int64)
            ts = ts + int(c["steps_offset"])
        else:
            ts = np.round(np.arange(big_t, 0, -big_t / n)).astype(np.int64) - 1
        self.timesteps = np.ascontiguousarray(ts)
        self.num_inference_steps = n

    def _alphas(self, timestep) -> tuple[np.float32, np.float32]:
        """(alpha_bar at t, alpha_bar at the previous timestep) of this row; float32."""
        self._require_timesteps()
        t = _as_int(timestep)
        prev_t = t - int(self.config["num_train_timesteps"]) // self.num_inference_steps
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self._final_alpha_cumprod()
        return self.alphas_cumprod[t], a_prev

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        c = schedulers[0].config
        model_output, sample = _f32(model_output), _f32(sample)
        pairs = [s._alphas(t) for s, t in zip(schedulers, timesteps, strict=True)]
        a_t, a_prev = (_per_row(v, sample.ndim) for v in zip(*pairs, strict=True))
        b_t = _ONE - a_t
        pt = c["prediction_type"]
        x0 = _predicted_x0(pt, model_output, sample, a_t, b_t)
        eps = _predicted_eps(pt, model_output, sample, x0, a_t, b_t)
        x0 = _clip_x0(x0, c)
        # eta = 0 (the pipelines' default): deterministic, std_dev_t = 0.
        direction = np.sqrt(_ONE - a_prev - _ZERO) * eps
        prev = np.sqrt(a_prev) * x0 + direction
        return StepOutput(prev.astype(np.float32), _f32(x0))
