"""DDIM (diffusers' ``DDIMScheduler``), eta = 0."""

from __future__ import annotations

import numpy as np

from .alpha_bar import _AlphaBarScheduler
from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    _ZERO,
    F32,
    StepOutput,
    _as_int,
    _f32,
    _per_row,
    _threshold,
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
        if pt == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
            eps = model_output
        elif pt == "sample":
            x0 = model_output
            eps = (sample - np.sqrt(a_t) * x0) / np.sqrt(b_t)
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
            eps = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample
        if c["thresholding"]:
            x0 = _threshold(x0, c["dynamic_thresholding_ratio"], c["sample_max_value"])
        elif c["clip_sample"]:
            r = F32(c["clip_sample_range"])
            x0 = np.clip(x0, -r, r)
        # eta = 0 (the pipelines' default): deterministic, std_dev_t = 0.
        direction = np.sqrt(_ONE - a_prev - _ZERO) * eps
        prev = np.sqrt(a_prev) * x0 + direction
        return StepOutput(prev.astype(np.float32), _f32(x0))
