"""Euler and Euler ancestral (diffusers' ``EulerDiscreteScheduler`` and
``EulerAncestralDiscreteScheduler``)."""

from __future__ import annotations

import numpy as np

from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    SchedulerConfigError,
    StepOutput,
    _f32,
    _karras_sigmas,
    _sigma_to_t,
)
from .sigma import _SigmaScheduler


class Euler(_SigmaScheduler):
    diffusers_class = "EulerDiscreteScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_type": "discrete",
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }

    def _check_config(self) -> None:
        super()._check_config()
        c = self.config
        if c["interpolation_type"] != "linear":
            raise SchedulerConfigError("only interpolation_type='linear' is supported")
        if c["use_exponential_sigmas"] or c["use_beta_sigmas"]:
            raise SchedulerConfigError("use_exponential_sigmas / use_beta_sigmas are not supported")
        if c["timestep_type"] != "discrete":
            raise SchedulerConfigError("only timestep_type='discrete' is supported")
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError("final_sigmas_type must be 'zero' or 'sigma_min'")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        c = self.config
        ts = self._spaced_timesteps_f32(n)
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        sig = np.interp(ts, np.arange(0, len(train)), train)
        if c["use_karras_sigmas"]:
            smin = c["sigma_min"] if c["sigma_min"] is not None else float(sig[-1])
            smax = c["sigma_max"] if c["sigma_max"] is not None else float(sig[0])
            sig = _karras_sigmas(smax, smin, n)
            ts = np.array([_sigma_to_t(s, log_sigmas) for s in sig])
        if c["final_sigmas_type"] == "sigma_min":
            last = np.sqrt((_ONE - self.alphas_cumprod[0]) / self.alphas_cumprod[0])
        else:
            last = 0.0
        self.sigmas = np.concatenate([sig, [last]]).astype(np.float32)
        self.timesteps = np.asarray(ts).astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        self._init_step_index(timestep)
        model_output, sample = _f32(model_output), _f32(sample)
        i = self._step_index
        sigma = self.sigmas[i]
        sigma_hat = sigma  # s_churn = 0 -> gamma = 0, sigma_hat = sigma
        x0 = self._x0_from_sigma(model_output, sigma, sample)
        derivative = (sample - x0) / sigma_hat
        dt = self.sigmas[i + 1] - sigma_hat
        prev = sample + derivative * dt
        self._step_index += 1
        return StepOutput(prev.astype(np.float32), _f32(x0))


class EulerAncestral(_SigmaScheduler):
    diffusers_class = "EulerAncestralDiscreteScheduler"
    defaults = {**_COMMON_DEFAULTS, "rescale_betas_zero_snr": False}
    _prediction_types = ("epsilon", "v_prediction")
    needs_noise = True

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        ts = self._spaced_timesteps_f32(n)
        train = self._train_sigmas()
        sig = np.interp(ts, np.arange(0, len(train)), train)
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = ts.astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        if noise is None:
            raise ValueError("Euler ancestral steps draw noise: pass a NoiseSource")
        self._init_step_index(timestep)
        model_output, sample = _f32(model_output), _f32(sample)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = self._x0_from_sigma(model_output, sigma, sample)
        s_from, s_to = self.sigmas[i], self.sigmas[i + 1]
        s_from2, s_to2 = s_from * s_from, s_to * s_to
        sigma_up = np.sqrt(s_to2 * (s_from2 - s_to2) / s_from2)
        sigma_down = np.sqrt(s_to2 - sigma_up * sigma_up)
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        eps = _f32(noise.randn(tuple(model_output.shape)))
        prev = prev + eps * sigma_up
        self._step_index += 1
        return StepOutput(prev.astype(np.float32), _f32(x0))
