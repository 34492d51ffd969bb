"""Euler and Euler ancestral (diffusers' ``EulerDiscreteScheduler`` and
``EulerAncestralDiscreteScheduler``)."""

from __future__ import annotations

import numpy as np

from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    SchedulerConfigError,
    StepOutput,
    _columns,
    _draw,
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

    def _sigma_dt(self, timestep) -> tuple[np.float32, np.float32]:
        """(sigma, next sigma - sigma) of this row's current step; advances the step index."""
        self._require_timesteps()
        self._init_step_index(timestep)
        i = self._step_index
        self._step_index += 1
        sigma_hat = self.sigmas[i]  # s_churn = 0 -> gamma = 0, sigma_hat = sigma
        return sigma_hat, self.sigmas[i + 1] - sigma_hat

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        model_output, sample = _f32(model_output), _f32(sample)
        rows = [s._sigma_dt(t) for s, t in zip(schedulers, timesteps, strict=True)]
        sigma, dt = _columns(rows, sample.ndim)
        x0 = schedulers[0]._x0_from_sigma(model_output, sigma, sample)
        derivative = (sample - x0) / sigma
        prev = sample + derivative * dt
        return StepOutput(prev.astype(np.float32), _f32(x0))


class EulerAncestral(_SigmaScheduler):
    diffusers_class = "EulerAncestralDiscreteScheduler"
    defaults = {**_COMMON_DEFAULTS, "rescale_betas_zero_snr": False}
    _prediction_types = ("epsilon", "v_prediction")

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

    def _sigmas_up_down(self, timestep) -> tuple[np.float32, np.float32, np.float32]:
        """(sigma, sigma_up, sigma_down - sigma) of this row's current step; advances the step
        index."""
        self._require_timesteps()
        self._init_step_index(timestep)
        i = self._step_index
        s_from, s_to = self.sigmas[i], self.sigmas[i + 1]
        s_from2, s_to2 = s_from * s_from, s_to * s_to
        sigma_up = np.sqrt(s_to2 * (s_from2 - s_to2) / s_from2)
        sigma_down = np.sqrt(s_to2 - sigma_up * sigma_up)
        self._step_index += 1
        return s_from, sigma_up, sigma_down - s_from

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        model_output, sample = _f32(model_output), _f32(sample)
        eps = _draw(noises, model_output.shape, "Euler ancestral")
        rows = [s._sigmas_up_down(t) for s, t in zip(schedulers, timesteps, strict=True)]
        sigma, sigma_up, down_step = _columns(rows, sample.ndim)
        x0 = schedulers[0]._x0_from_sigma(model_output, sigma, sample)
        derivative = (sample - x0) / sigma
        prev = sample + derivative * down_step
        prev = prev + eps * sigma_up
        return StepOutput(prev.astype(np.float32), _f32(x0))
