"""LCM (diffusers' ``LCMScheduler``): the few-step sampler of latent consistency models and of
LCM-LoRA, plus the distillation schedule it shares with TCD (``tcd.py``).

Both pick their ``steps`` timesteps from the ``original_inference_steps`` (50) evenly spaced
training timesteps the model was distilled on (4 steps: 999, 759, 499, 259), so they run at
most that many steps. ``StableDiffusionInpaintPipeline`` calls ``set_timesteps(steps)`` (no
``original_inference_steps`` or ``strength`` argument: strength < 1 then keeps the last
``int(steps * strength)`` of them, as for every scheduler) and uses ``step(...).prev_sample``;
our ``pred_original_sample`` is LCM's ``denoised`` (the consistency function's output, the
image a preview shows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .alpha_bar import _AlphaBarScheduler
from .base import (
    _ONE,
    F32,
    SchedulerConfigError,
    StepOutput,
    _as_int,
    _clip_x0,
    _draw,
    _f32,
    _per_row,
    _predicted_x0,
)

#: LCMScheduler.__init__'s defaults (TCDScheduler's are the same).
DISTILLED_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "original_inference_steps": 50,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "timestep_scaling": 10.0,
    "rescale_betas_zero_snr": False,
}


class _DistilledSchedule(_AlphaBarScheduler):
    """Timesteps taken from the distillation schedule (LCM, TCD); one step index per row."""

    defaults = DISTILLED_DEFAULTS

    @property
    def max_steps(self) -> int:
        """Distilled schedules pick from the ``original_inference_steps`` they were trained on."""
        return min(super().max_steps, int(self.config["original_inference_steps"]))

    def _check_steps(self, n: int) -> int:
        n = super()._check_steps(n)
        orig = int(self.config["original_inference_steps"])
        if not 1 <= orig <= int(self.config["num_train_timesteps"]):
            raise SchedulerConfigError(
                f"original_inference_steps={orig} must be between 1 and num_train_timesteps"
            )
        if n > orig:
            raise ValueError(
                f"{type(self).__name__} runs at most {orig} steps (the timesteps it was "
                f"distilled on), got {n}; few-step sampling uses 2-8 steps"
            )
        return n

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        big_t = int(self.config["num_train_timesteps"])
        orig = int(self.config["original_inference_steps"])
        origin = np.arange(1, orig + 1, dtype=np.int64) * (big_t // orig) - 1
        origin = origin[::-1].copy()
        picks = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = np.ascontiguousarray(origin[picks])
        self.num_inference_steps = n
        self._step_index = None
        self._begin_index = None

    def _advance(self, timestep: Any) -> tuple[int, int, bool]:
        """(t, the next timestep in the schedule or ``end`` after the last, is this the last
        step) for this row; advances its step index (diffusers' ``_init_step_index``: the
        begin index when set, else the position of ``timestep``)."""
        self._require_timesteps()
        t = _as_int(timestep)
        if self._step_index is None:
            if self._begin_index is not None:
                self._step_index = self._begin_index
            else:
                hits = np.nonzero(self.timesteps == t)[0]
                if len(hits) == 0:
                    raise ValueError(f"timestep {t} is not in this scheduler's timesteps")
                self._step_index = int(hits[1] if len(hits) > 1 else hits[0])
        i = self._step_index
        nxt = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1
        self._step_index += 1
        return t, nxt, i == self.num_inference_steps - 1

    def _alpha(self, t: int) -> np.float32:
        return self.alphas_cumprod[t] if t >= 0 else self._final_alpha_cumprod()


def _noised(clean, a_keep, a_noise, last, noises, rows: int, who: str) -> np.ndarray:
    """prev = a_keep * clean + a_noise * noise for rows not at their last step (noise drawn from
    each such row's source), ``clean`` unchanged for rows at their last step (no draw)."""
    if all(last):
        return clean
    draw = [i for i, done in enumerate(last) if not done]
    k = clean.shape[0] // rows
    if len(draw) == rows:
        return a_keep * clean + a_noise * _draw(noises, clean.shape, who)
    sel = (np.asarray(draw)[:, None] * k + np.arange(k)).ravel()
    noise = _draw([noises[i] for i in draw], (len(sel),) + clean.shape[1:], who)
    out = clean.copy()
    out[sel] = a_keep[sel // k] * clean[sel] + a_noise[sel // k] * noise
    return out


class LCM(_DistilledSchedule):
    diffusers_class = "LCMScheduler"

    def _coefficients(self, timestep: Any) -> tuple:
        """Per-row float32 scalars of this step: alpha_bar at t and at the next timestep (t
        itself after the last), the consistency boundary scalings c_skip / c_out, and whether
        this is the last step. Advances the step index."""
        t, nxt, last = self._advance(timestep)
        prev_t = nxt if nxt >= 0 else t
        # boundary condition: sigma_data 0.5; torch computes it in float32 from the long t
        scaled = F32(t) * F32(self.config["timestep_scaling"])
        denom = scaled * scaled + F32(0.25)
        return self._alpha(t), self._alpha(prev_t), F32(0.25) / denom, scaled / np.sqrt(denom), last

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        c = schedulers[0].config
        model_output, sample = _f32(model_output), _f32(sample)
        rows = [s._coefficients(t) for s, t in zip(schedulers, timesteps, strict=True)]
        cols = list(zip(*rows, strict=True))
        a_t, a_prev, c_skip, c_out = (_per_row(v, sample.ndim) for v in cols[:4])
        b_t, b_prev = _ONE - a_t, _ONE - a_prev
        x0 = _clip_x0(_predicted_x0(c["prediction_type"], model_output, sample, a_t, b_t), c)
        denoised = _f32(c_out * x0 + c_skip * sample)
        # noise is injected between steps, never after the last one
        prev = _noised(
            denoised, np.sqrt(a_prev), np.sqrt(b_prev), cols[4], noises, len(rows), "LCM"
        )
        return StepOutput(_f32(prev), denoised)
