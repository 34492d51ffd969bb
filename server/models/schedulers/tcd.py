"""TCD (diffusers' ``TCDScheduler``): trajectory consistency distillation's sampler, for TCD-LoRA.

Same distillation schedule as LCM (``lcm._DistilledSchedule``). Each step predicts x0, moves it
to the earlier timestep s = floor((1 - gamma) * t_next) (``pred_noised_sample``), then re-noises
it to t_next with fresh noise, except after the last step. gamma (diffusers' ``eta``) is
``TCDScheduler.step``'s default, 0.3: TCD's recommended value. Note that
``StableDiffusionInpaintPipeline`` passes its own ``eta`` argument (default 0.0) to schedulers
whose ``step`` takes one, so call it with ``eta=0.3`` to compare.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import _ONE, F32, StepOutput, _f32, _per_row, _predicted_eps, _predicted_x0
from .lcm import _DistilledSchedule, _noised

#: gamma: 0 = deterministic (x_s only), 1 = fully stochastic; TCDScheduler.step's default.
ETA = 0.3


class TCD(_DistilledSchedule):
    diffusers_class = "TCDScheduler"
    eta = ETA

    def _coefficients(self, timestep: Any) -> tuple:
        """Per-row float32 scalars: alpha_bar at t, at the next timestep (0 after the last) and
        at s; whether this is the last step. Advances the step index."""
        t, nxt, last = self._advance(timestep)
        prev_t = max(nxt, 0)
        # torch: floor((1 - eta) * long tensor) evaluates in float32
        s = int(np.floor(F32(1 - self.eta) * F32(prev_t)))
        return self._alpha(t), self._alpha(prev_t), self._alpha(s), last or self.eta <= 0

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        pt = schedulers[0].config["prediction_type"]
        model_output, sample = _f32(model_output), _f32(sample)
        rows = [s._coefficients(t) for s, t in zip(schedulers, timesteps, strict=True)]
        cols = list(zip(*rows, strict=True))
        a_t, a_prev, a_s = (_per_row(v, sample.ndim) for v in cols[:3])
        b_t, b_s = _ONE - a_t, _ONE - a_s
        x0 = _predicted_x0(pt, model_output, sample, a_t, b_t)
        eps = _predicted_eps(pt, model_output, sample, x0, a_t, b_t)
        x_s = np.sqrt(a_s) * x0 + np.sqrt(b_s) * eps  # diffusers' pred_noised_sample
        ratio = a_prev / a_s
        prev = _noised(
            x_s, np.sqrt(ratio), np.sqrt(_ONE - ratio), cols[3], noises, len(rows), "TCD"
        )
        return StepOutput(_f32(prev), _f32(x0))
