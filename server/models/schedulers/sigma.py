"""The sigma family base: schedulers that step through a table of noise levels (sigmas)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import _ONE, F32, Scheduler, _f32, _per_row


class _SigmaScheduler(Scheduler):
    """Schedulers that track a step index into a sigma table (Euler, Euler a, LMS, DPM++)."""

    _rescaled_last_alpha = True  # alphas_cumprod[-1] = 2**-24 when rescale_betas_zero_snr

    def __init__(self, **config: Any):
        super().__init__(**config)
        if self.config.get("rescale_betas_zero_snr") and self._rescaled_last_alpha:
            self.alphas_cumprod[-1] = F32(2.0**-24)
        self.sigmas = self._train_sigmas()[::-1].copy()

    def _train_sigmas(self) -> np.ndarray:
        ac = self.alphas_cumprod
        return np.sqrt((_ONE - ac) / ac).astype(np.float32)

    def _spaced_timesteps_f32(self, n: int) -> np.ndarray:
        c = self.config
        big_t = int(c["num_train_timesteps"])
        sp = c["timestep_spacing"]
        if sp == "linspace":
            return np.linspace(0, big_t - 1, n, dtype=np.float32)[::-1].copy()
        if sp == "leading":
            ts = (np.arange(0, n) * (big_t // n)).round()[::-1].astype(np.float32)
            return ts + F32(c["steps_offset"])
        ts = np.arange(big_t, 0, -big_t / n).round().astype(np.float32)
        return ts - _ONE

    def _index_for_timestep(self, timestep: Any) -> int:
        hits = np.nonzero(self.timesteps == np.asarray(timestep).reshape(-1)[0])[0]
        if len(hits) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep: Any) -> None:
        if self._step_index is None:
            if self._begin_index is None:
                self._step_index = self._index_for_timestep(timestep)
            else:
                self._step_index = self._begin_index

    def _add_noise_indices(self, timestep: Any) -> list[int]:
        ts = np.asarray(timestep).reshape(-1)
        if self._begin_index is None:
            return [self._index_for_timestep(t) for t in ts]
        if self._step_index is not None:
            return [self._step_index] * len(ts)
        return [self._begin_index] * len(ts)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        original, noise = _f32(original), _f32(noise)
        sigma = _per_row(self.sigmas[self._add_noise_indices(timestep)], original.ndim)
        return (original + noise * sigma).astype(np.float32)

    def _peek_step_index(self, timestep: Any) -> int:
        """The step index ``_init_step_index`` would set, without setting it."""
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        return self._index_for_timestep(timestep)

    @classmethod
    def scale_model_input_batch(cls, schedulers, sample, timesteps) -> np.ndarray:
        denom = []
        for s, t in zip(schedulers, timesteps, strict=True):
            s._init_step_index(t)
            sigma = s.sigmas[s._step_index]
            denom.append(np.sqrt(sigma * sigma + _ONE))
        return (_f32(sample) / _per_row(denom, np.ndim(sample))).astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        m = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(m)
        return float(np.sqrt(m * m + _ONE))

    def _x0_from_sigma(self, model_output, sigma, sample):
        pt = self.config["prediction_type"]
        if pt == "epsilon":
            return sample - sigma * model_output
        if pt == "v_prediction":
            return model_output * (-sigma / np.sqrt(sigma * sigma + _ONE)) + (
                sample / (sigma * sigma + _ONE)
            )
        return model_output
