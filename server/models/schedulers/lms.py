"""LMS: linear multistep on sigmas (diffusers' ``LMSDiscreteScheduler``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import (
    _COMMON_DEFAULTS,
    F32,
    SchedulerConfigError,
    StepOutput,
    _f32,
    _karras_sigmas,
    _per_row,
    _row_slices,
    _same_branch,
    _sigma_to_t,
    _stack,
)
from .sigma import _SigmaScheduler


class LMS(_SigmaScheduler):
    diffusers_class = "LMSDiscreteScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
    }
    _rescaled_last_alpha = False
    lms_order = 4
    # Gauss-Legendre nodes: exact for the <= cubic Lagrange basis polynomials LMS integrates.
    _gl_x, _gl_w = np.polynomial.legendre.leggauss(4)

    def _check_config(self) -> None:
        super()._check_config()
        if self.config["use_exponential_sigmas"] or self.config["use_beta_sigmas"]:
            raise SchedulerConfigError("use_exponential_sigmas / use_beta_sigmas are not supported")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        ts = self._spaced_timesteps_f32(n)
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        sig = np.interp(ts, np.arange(0, len(train)), train)
        if self.config["use_karras_sigmas"]:
            sig = _karras_sigmas(float(sig[0]), float(sig[-1]), n)
            ts = np.array([_sigma_to_t(s, log_sigmas) for s in sig])
        self.sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        self.timesteps = np.asarray(ts).astype(np.float32)
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None
        self.derivatives: list[np.ndarray] = []

    def _coefficient(self, order: int, t: int, cur: int) -> float:
        s = self.sigmas.astype(np.float64)
        a, b = s[t], s[t + 1]
        tau = 0.5 * (b - a) * self._gl_x + 0.5 * (a + b)
        prod = np.ones_like(tau)
        for k in range(order):
            if k != cur:
                prod = prod * (tau - s[t - k]) / (s[t - cur] - s[t - k])
        return float(0.5 * (b - a) * np.sum(self._gl_w * prod))

    def _terms(self, timestep: Any) -> int:
        """How many past derivatives this row's next step combines (its branch)."""
        i = self._peek_step_index(timestep)
        return min(i + 1, self.lms_order, len(self.derivatives) + 1)

    def batch_key(self, timestep: Any) -> tuple:
        return (self.config_key, self._terms(timestep))

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        model_output, sample = _f32(model_output), _f32(sample)
        n = len(schedulers)
        for s in schedulers:
            s._require_timesteps()
        pairs = zip(schedulers, timesteps, strict=True)
        terms = _same_branch([s._terms(t) for s, t in pairs], "LMS")
        sigma, coeffs = [], []
        for s, t in zip(schedulers, timesteps, strict=True):
            s._init_step_index(t)
            i = s._step_index
            order = min(i + 1, s.lms_order)
            sigma.append(s.sigmas[i])
            coeffs.append([s._coefficient(order, i, k) for k in range(order)])
        sigma_v = _per_row(sigma, sample.ndim)
        x0 = schedulers[0]._x0_from_sigma(model_output, sigma_v, sample)
        derivative = (sample - x0) / sigma_v
        history = []  # per row: its derivatives, newest first (this step's included)
        for s, d in zip(schedulers, _row_slices(derivative, n), strict=True):
            s.derivatives.append(d)
            if len(s.derivatives) > s.lms_order:
                s.derivatives.pop(0)
            history.append(s.derivatives[::-1])
        # like diffusers: after a begin_index jump there can be fewer derivatives than coeffs
        # (``terms`` = min(order, derivatives kept))
        acc: Any = 0
        for k in range(terms):
            d = derivative if k == 0 else _stack([h[k] for h in history])
            acc = acc + _per_row([F32(c[k]) for c in coeffs], sample.ndim) * d
        prev = sample + acc
        for s in schedulers:
            s._step_index += 1
        return StepOutput(_f32(prev), _f32(x0))
