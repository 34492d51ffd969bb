"""PNDM (diffusers' ``PNDMScheduler``): Runge-Kutta warm-up (PRK) then linear multistep (PLMS)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .alpha_bar import _AlphaBarScheduler
from .base import (
    _COMMON_DEFAULTS,
    _ONE,
    StepOutput,
    _as_int,
    _f32,
    _per_row,
    _row_slices,
    _same_branch,
    _stack,
)


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

    def _in_prk(self) -> bool:
        return self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]

    def _plms_branch(self) -> int:
        """Which PLMS update the next step makes: 0 (first step), 1 (second step: average with
        the first), 2 / 3 / 4 (the multistep formula over that many model outputs)."""
        n_ets = len(self.ets) if self.counter == 1 else min(len(self.ets), 3) + 1
        return self.counter if n_ets == 1 and self.counter in (0, 1) else n_ets

    def batch_key(self, timestep: Any) -> tuple:
        # PRK warm-up rows (never in the server: it sets skip_prk_steps) group by position
        if self._in_prk():
            return (self.config_key, "prk", self.counter)
        return (self.config_key, self._plms_branch())

    @classmethod
    def step_batch(cls, schedulers, model_output, timesteps, sample, noises) -> StepOutput:
        for s in schedulers:
            s._require_timesteps()
        model_output, sample = _f32(model_output), _f32(sample)
        ts = [_as_int(t) for t in timesteps]
        x0 = _f32(cls._x0(schedulers, model_output, ts, sample))
        n = len(schedulers)
        if _same_branch([s._in_prk() for s in schedulers], "PNDM"):
            outs, xs = _row_slices(model_output, n), _row_slices(sample, n)
            prev = _stack([s._step_prk(outs[i], ts[i], xs[i]) for i, s in enumerate(schedulers)])
        else:
            prev = cls._step_plms(schedulers, model_output, ts, sample)
        return StepOutput(prev.astype(np.float32), x0)

    def _step_prk(self, model_output, t, sample):
        """One Runge-Kutta warm-up step of this row (its own slices of the arrays)."""
        big_t = int(self.config["num_train_timesteps"])
        diff = 0 if self.counter % 2 else big_t // self.num_inference_steps // 2
        prev_t = t - diff
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        k = self.counter % 4
        if k == 0:
            self.cur_model_output = self.cur_model_output + (1 / 6) * model_output
            self.ets.append(model_output.copy())
            self.cur_sample = sample.copy()
        elif k in (1, 2):
            self.cur_model_output = self.cur_model_output + (1 / 3) * model_output
        else:
            model_output = self.cur_model_output + (1 / 6) * model_output
            self.cur_model_output = 0
        cur = self.cur_sample if self.cur_sample is not None else sample
        prev = type(self)._prev_sample([self], cur, [t], [prev_t], model_output)
        self.counter += 1
        return prev

    @classmethod
    def _step_plms(cls, schedulers, model_output, ts, sample):
        if any(not s.config["skip_prk_steps"] and len(s.ets) < 3 for s in schedulers):
            raise RuntimeError("PNDM PLMS steps need the 12 PRK warm-up steps first")
        branch = _same_branch([s._plms_branch() for s in schedulers], "PNDM")
        big_t = int(schedulers[0].config["num_train_timesteps"])
        kept = _row_slices(model_output.copy(), len(schedulers))  # the caller may reuse its array
        t_eff, prev_t = [], []
        for s, t, m in zip(schedulers, ts, kept, strict=True):
            jump = big_t // s.num_inference_steps
            if s.counter != 1:
                s.ets = s.ets[-3:] + [m]
                t_eff.append(t)
                prev_t.append(t - jump)
            else:
                t_eff.append(t + jump)
                prev_t.append(t)

        def ets(k: int) -> np.ndarray:  # every row's k-th latest model output, stacked
            return model_output if k == 1 else _stack([s.ets[-k] for s in schedulers])

        if branch == 0:
            for s, x in zip(schedulers, _row_slices(sample, len(schedulers)), strict=True):
                s.cur_sample = x.copy()
        elif branch == 1:
            model_output = (model_output + _stack([s.ets[-1] for s in schedulers])) / 2
            sample = _stack([s.cur_sample for s in schedulers])
            for s in schedulers:
                s.cur_sample = None
        elif branch == 2:
            model_output = (3 * ets(1) - ets(2)) / 2
        elif branch == 3:
            model_output = (23 * ets(1) - 16 * ets(2) + 5 * ets(3)) / 12
        else:
            model_output = (1 / 24) * (55 * ets(1) - 59 * ets(2) + 37 * ets(3) - 9 * ets(4))
        prev = cls._prev_sample(schedulers, sample, t_eff, prev_t, model_output)
        for s in schedulers:
            s.counter += 1
        return prev

    @classmethod
    def _prev_sample(cls, schedulers, sample, ts, prev_ts, model_output):
        a_t, a_prev = [], []
        for s, t, p in zip(schedulers, ts, prev_ts, strict=True):
            a_t.append(s.alphas_cumprod[t])
            a_prev.append(s.alphas_cumprod[p] if p >= 0 else s._final_alpha_cumprod())
        a_t, a_prev = _per_row(a_t, sample.ndim), _per_row(a_prev, sample.ndim)
        b_t = _ONE - a_t
        b_prev = _ONE - a_prev
        if schedulers[0].config["prediction_type"] == "v_prediction":
            model_output = np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample
        sample_coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(b_prev) + np.sqrt(a_t * b_t * a_prev)
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom
