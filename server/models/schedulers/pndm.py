"""PNDM (diffusers' ``PNDMScheduler``): Runge-Kutta warm-up (PRK) then linear multistep (PLMS)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .alpha_bar import _AlphaBarScheduler
from .base import _COMMON_DEFAULTS, _ONE, StepOutput, _as_int, _f32


class PNDM(_AlphaBarScheduler):
    diffusers_class = "PNDMScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "leading",
    }
    _prediction_types = ("epsilon", "v_prediction")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        c = self.config
        big_t = int(c["num_train_timesteps"])
        sp = c["timestep_spacing"]
        if sp == "linspace":
            base = np.linspace(0, big_t - 1, n).round().astype(np.int64)
        elif sp == "leading":
            base = (np.arange(0, n) * (big_t // n)).round() + int(c["steps_offset"])
        else:
            base = np.round(np.arange(big_t, 0, -big_t / n))[::-1].astype(np.int64) - 1
        base = np.asarray(base)
        if c["skip_prk_steps"]:
            self.prk_timesteps = np.array([], dtype=np.int64)
            plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            if n < 4:
                raise ValueError(
                    "PNDM with skip_prk_steps=False (Runge-Kutta warm-up) needs at least 4 "
                    f"steps, got {n}; use more steps or another scheduler"
                )
            half = big_t // n // 2
            prk = np.array(base[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].astype(np.int64)
            plms = base[:-3][::-1]
        self.plms_timesteps = np.asarray(plms).astype(np.int64)
        self.timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.num_inference_steps = n
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: np.ndarray | None = None

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        model_output, sample = _f32(model_output), _f32(sample)
        t = _as_int(timestep)
        x0 = _f32(self._x0(model_output, t, sample))
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            prev = self._step_prk(model_output, t, sample)
        else:
            prev = self._step_plms(model_output, t, sample)
        return StepOutput(prev.astype(np.float32), x0)

    def _step_prk(self, model_output, t, sample):
        big_t = int(self.config["num_train_timesteps"])
        diff = 0 if self.counter % 2 else big_t // self.num_inference_steps // 2
        prev_t = t - diff
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        k = self.counter % 4
        if k == 0:
            self.cur_model_output = self.cur_model_output + (1 / 6) * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif k in (1, 2):
            self.cur_model_output = self.cur_model_output + (1 / 3) * model_output
        else:
            model_output = self.cur_model_output + (1 / 6) * model_output
            self.cur_model_output = 0
        cur = self.cur_sample if self.cur_sample is not None else sample
        prev = self._prev_sample(cur, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _step_plms(self, model_output, t, sample):
        if not self.config["skip_prk_steps"] and len(self.ets) < 3:
            raise RuntimeError("PNDM PLMS steps need the 12 PRK warm-up steps first")
        big_t = int(self.config["num_train_timesteps"])
        prev_t = t - big_t // self.num_inference_steps
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_t = t
            t = t + big_t // self.num_inference_steps
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._prev_sample(sample, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _prev_sample(self, sample, t, prev_t, model_output):
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self._final_alpha_cumprod()
        b_t = _ONE - a_t
        b_prev = _ONE - a_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample
        sample_coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(b_prev) + np.sqrt(a_t * b_t * a_prev)
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom
