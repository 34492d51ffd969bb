"""Torch-free numpy diffusion schedulers that reproduce diffusers' schedulers numerically.

Each ``Scheduler`` instance holds the state of ONE image row (step index, solver history,
...), so the server can batch rows that sit at different steps into one UNet call and then
advance each row with its own instance.

Conventions: samples / model outputs are float32 NCHW latents (any batch size; the server
passes batch 1). Scalar coefficients are float32 like diffusers' float32 tensors and the
expressions keep diffusers' evaluation order, so results agree with diffusers to float32
rounding (a few ulp; torch's own float32 sqrt/log are not always correctly rounded).

``make_scheduler(config, name)`` takes a diffusers ``scheduler_config.json`` dict and
converts it the way ``XScheduler.from_config(config)`` does. Public names: see
``scheduler_names()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

F32 = np.float32
_ONE = F32(1.0)
_ZERO = F32(0.0)


class NoiseSource(Protocol):
    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 standard normal samples of ``shape``."""
        ...


class NumpyNoise:
    """Default NoiseSource: ``np.random.Generator(np.random.PCG64(seed))``."""

    def __init__(self, seed: int):
        self._gen = np.random.Generator(np.random.PCG64(seed))

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._gen.standard_normal(tuple(shape), dtype=np.float32)


@dataclass
class StepOutput:
    prev_sample: np.ndarray  # float32, same shape as sample
    pred_original_sample: np.ndarray  # float32 x0 estimate (for streaming previews)


class SchedulerConfigError(ValueError):
    """The scheduler config / name cannot be used; the message says what to change."""


# --------------------------------------------------------------------------- numeric helpers


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, bit for bit.

    torch computes step = (end - start) / (steps - 1) in float32, then start + step * i for the
    first half and end - step * (steps - 1 - i) for the second, each as one fused multiply-add.
    """
    s, e = F32(start), F32(end)
    if steps == 1:
        return np.array([s], dtype=np.float32)
    step = F32((e - s) / F32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    lo = np.float64(s) + np.float64(step) * i
    hi = np.float64(e) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, lo, hi).astype(np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 CPU tensor: accumulates in float64, rounds each output."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas = _ONE - betas
    abar_sqrt = np.sqrt(_cumprod_f32(alphas))
    a0, at = abar_sqrt[0], abar_sqrt[-1]
    abar_sqrt = abar_sqrt - at
    abar_sqrt = abar_sqrt * F32(a0 / (a0 - at))
    abar = abar_sqrt * abar_sqrt
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return (_ONE - alphas).astype(np.float32)


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Continuous training timestep whose sigma is ``sigma`` (log-linear interpolation)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(np.shape(sigma))


def _karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _threshold(x: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (Imagen) of an x0 estimate, per batch item."""
    b = x.shape[0]
    flat = x.reshape(b, -1)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(np.float32)
    s = np.clip(s, 1, max_value).astype(np.float32)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x.shape).astype(np.float32)


def _as_int(t: Any) -> int:
    return int(np.asarray(t).reshape(-1)[0])


def _per_row(values: np.ndarray, ndim: int) -> np.ndarray:
    """Flattened per-row coefficients shaped to broadcast over (batch, ...) of ``ndim`` dims."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    return v.reshape((-1,) + (1,) * (ndim - 1))


# --------------------------------------------------------------------------- base class

_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}


class Scheduler:
    """Base class; one instance per image row (stateful). See module docstring."""

    diffusers_class: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    order: int = 1
    needs_noise: bool = False
    timesteps: np.ndarray

    def __init__(self, **config: Any):
        cfg = dict(self.defaults)
        unknown = set(config) - set(cfg)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown config keys {sorted(unknown)}")
        cfg.update(config)
        self.config = cfg
        self._check_config()
        self.betas = self._make_betas()
        self.alphas = (_ONE - self.betas).astype(np.float32)
        self.alphas_cumprod = _cumprod_f32(self.alphas)
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._step_index: int | None = None

    # -- config ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], **overrides: Any) -> Scheduler:
        """Like diffusers' ``cls.from_config(config, **overrides)``: keys this class does not
        take are ignored; keys listed in ``_use_default_values`` fall back to this class's
        defaults; ``overrides`` win."""
        use_default = set(config.get("_use_default_values", []) or [])
        init: dict[str, Any] = {}
        for key in cls.defaults:
            if key in overrides:
                init[key] = overrides[key]
            elif key in config and key not in use_default:
                init[key] = config[key]
        return cls(**init)

    def _check_config(self) -> None:
        c = self.config
        if c["prediction_type"] not in self._prediction_types:
            raise SchedulerConfigError(
                f"{self.diffusers_class} does not support prediction_type="
                f"{c['prediction_type']!r}; use one of {list(self._prediction_types)}"
            )
        if c["timestep_spacing"] not in ("linspace", "leading", "trailing"):
            raise SchedulerConfigError(
                f"timestep_spacing={c['timestep_spacing']!r} is not supported; use 'linspace', "
                "'leading' or 'trailing'"
            )

    _prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")

    def _make_betas(self) -> np.ndarray:
        c = self.config
        n = int(c["num_train_timesteps"])
        if c["trained_betas"] is not None:
            betas = np.asarray(c["trained_betas"], dtype=np.float32)
        elif c["beta_schedule"] == "linear":
            betas = _torch_linspace_f32(c["beta_start"], c["beta_end"], n)
        elif c["beta_schedule"] == "scaled_linear":
            b = _torch_linspace_f32(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, n)
            betas = b * b
        elif c["beta_schedule"] == "squaredcos_cap_v2":
            betas = _betas_for_alpha_bar(n)
        else:
            raise SchedulerConfigError(
                f"beta_schedule={c['beta_schedule']!r} is not supported; use 'linear', "
                "'scaled_linear' or 'squaredcos_cap_v2'"
            )
        if c.get("rescale_betas_zero_snr"):
            betas = _rescale_zero_terminal_snr(betas)
        return betas.astype(np.float32)

    # -- API ---------------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def set_begin_index(self, begin_index: int) -> None:
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        return _f32(sample)

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        noise: NoiseSource | None = None,
    ) -> StepOutput:
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before stepping")

    def _check_steps(self, n: int) -> int:
        n = int(n)
        if n < 1 or n > int(self.config["num_train_timesteps"]):
            raise ValueError(
                f"num_inference_steps must be between 1 and "
                f"{self.config['num_train_timesteps']}, got {n}"
            )
        return n


# --------------------------------------------------------------------------- alpha-bar family


class _AlphaBarScheduler(Scheduler):
    """Schedulers indexed directly by integer training timestep (DDIM, PNDM)."""

    def _final_alpha_cumprod(self) -> np.float32:
        return _ONE if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def _x0(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        a = self.alphas_cumprod[t]
        b = _ONE - a
        pt = self.config["prediction_type"]
        if pt == "epsilon":
            return (sample - np.sqrt(b) * model_output) / np.sqrt(a)
        if pt == "v_prediction":
            return np.sqrt(a) * sample - np.sqrt(b) * model_output
        return model_output

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        original, noise = _f32(original), _f32(noise)
        idx = np.asarray(timestep).reshape(-1).astype(np.int64)
        a = self.alphas_cumprod[idx]
        sa = _per_row(np.sqrt(a), original.ndim)
        sb = _per_row(np.sqrt(_ONE - a), original.ndim)
        return (sa * original + sb * noise).astype(np.float32)


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

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        c = self.config
        model_output, sample = _f32(model_output), _f32(sample)
        t = _as_int(timestep)
        prev_t = t - int(c["num_train_timesteps"]) // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self._final_alpha_cumprod()
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


# --------------------------------------------------------------------------- sigma family


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

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return (_f32(sample) / np.sqrt(sigma * sigma + _ONE)).astype(np.float32)

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

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        self._init_step_index(timestep)
        model_output, sample = _f32(model_output), _f32(sample)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = self._x0_from_sigma(model_output, sigma, sample)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > self.lms_order:
            self.derivatives.pop(0)
        order = min(i + 1, self.lms_order)
        coeffs = [self._coefficient(order, i, k) for k in range(order)]
        acc: Any = 0
        # like diffusers: after a begin_index jump there can be fewer derivatives than coeffs
        for coeff, d in zip(coeffs, reversed(self.derivatives), strict=False):
            acc = acc + F32(coeff) * d
        prev = sample + acc
        self._step_index += 1
        return StepOutput(_f32(prev), _f32(x0))


class DPMSolverMultistep(_SigmaScheduler):
    """DPM-Solver++ multistep (algorithm_type dpmsolver++), orders 1-3, midpoint/heun."""

    diffusers_class = "DPMSolverMultistepScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "solver_order": 2,
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def _check_config(self) -> None:
        super()._check_config()
        c = self.config
        if c["algorithm_type"] == "deis":
            c["algorithm_type"] = "dpmsolver++"
        if c["solver_type"] in ("logrho", "bh1", "bh2"):
            c["solver_type"] = "midpoint"
        if c["algorithm_type"] != "dpmsolver++":
            raise SchedulerConfigError(
                f"algorithm_type={c['algorithm_type']!r} is not supported; only 'dpmsolver++'"
            )
        if c["solver_type"] not in ("midpoint", "heun"):
            raise SchedulerConfigError("solver_type must be 'midpoint' or 'heun'")
        if int(c["solver_order"]) not in (1, 2, 3):
            raise SchedulerConfigError("solver_order must be 1, 2 or 3")
        for key in (
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ):
            if c[key]:
                raise SchedulerConfigError(f"{key}=True is not supported")
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise SchedulerConfigError("final_sigmas_type must be 'zero' or 'sigma_min'")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        c = self.config
        big_t = int(c["num_train_timesteps"])
        ac = self.alphas_cumprod
        lambda_t = np.log(np.sqrt(ac)) - np.log(np.sqrt(_ONE - ac))
        clipped_idx = int(np.searchsorted(lambda_t[::-1], c["lambda_min_clipped"], side="left"))
        last_t = big_t - clipped_idx
        sp = c["timestep_spacing"]
        if sp == "linspace":
            ts = np.linspace(0, last_t - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif sp == "leading":
            ratio = last_t // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64)
            ts = ts + int(c["steps_offset"])
        else:
            ts = np.arange(last_t, 0, -big_t / n).round().astype(np.int64) - 1
        train = self._train_sigmas()
        log_sigmas = np.log(train)
        if c["use_karras_sigmas"]:
            flipped = train[::-1]
            sig = _karras_sigmas(float(flipped[0]), float(flipped[-1]), n)
            ts = np.array([_sigma_to_t(s, log_sigmas) for s in sig])
            if c["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
        else:
            sig = np.interp(ts, np.arange(0, len(train)), train)
        if c["final_sigmas_type"] == "sigma_min":
            last = np.sqrt((_ONE - ac[0]) / ac[0])
        else:
            last = 0.0
        self.sigmas = np.concatenate([sig, [last]]).astype(np.float32)
        self.timesteps = np.ascontiguousarray(np.asarray(ts).astype(np.int64))
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs: list[np.ndarray | None] = [None] * int(c["solver_order"])
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def _index_for_timestep(self, timestep: Any) -> int:
        hits = np.nonzero(self.timesteps == np.asarray(timestep).reshape(-1)[0])[0]
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    # dpmsolver++ ignores input scaling
    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        return _f32(sample)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    @staticmethod
    def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        return alpha_t, sigma * alpha_t

    def _lambda(self, i: int) -> tuple[np.float32, np.float32, np.float32]:
        a, s = self._alpha_sigma(self.sigmas[i])
        with np.errstate(divide="ignore"):
            return a, s, np.log(a) - np.log(s)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        original, noise = _f32(original), _f32(noise)
        sigma = _per_row(self.sigmas[self._add_noise_indices(timestep)], original.ndim)
        alpha_t = _ONE / np.sqrt(sigma * sigma + _ONE)
        sigma_t = sigma * alpha_t
        return (alpha_t * original + sigma_t * noise).astype(np.float32)

    def _convert(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        c = self.config
        pt = c["prediction_type"]
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[self._step_index])
        if pt == "epsilon":
            if c["variance_type"] in ("learned", "learned_range"):
                model_output = model_output[:, :3]
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif pt == "v_prediction":
            x0 = alpha_t * sample - sigma_t * model_output
        else:
            x0 = model_output
        if c["thresholding"]:
            x0 = _threshold(x0, c["dynamic_thresholding_ratio"], c["sample_max_value"])
        return _f32(x0)

    def step(self, model_output, timestep, sample, noise=None) -> StepOutput:
        self._require_timesteps()
        self._init_step_index(timestep)
        c = self.config
        model_output, sample = _f32(model_output), _f32(sample)
        i = self._step_index
        n = len(self.timesteps)
        order = int(c["solver_order"])
        lower_final = (i == n - 1) and (
            c["euler_at_final"]
            or (c["lower_order_final"] and n < 15)
            or c["final_sigmas_type"] == "zero"
        )
        lower_second = (i == n - 2) and c["lower_order_final"] and n < 15
        x0 = self._convert(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [x0]
        if order == 1 or self.lower_order_nums < 1 or lower_final:
            prev = self._first_order(x0, sample)
        elif order == 2 or self.lower_order_nums < 2 or lower_second:
            prev = self._second_order(sample)
        else:
            prev = self._third_order(sample)
        if self.lower_order_nums < order:
            self.lower_order_nums += 1
        self._step_index += 1
        return StepOutput(_f32(prev), x0)

    def _first_order(self, m0, sample):
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s, lam_s = self._lambda(i)
        h = lam_t - lam_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - _ONE)) * m0

    def _second_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s0, lam_s0 = self._lambda(i)
        _, _, lam_s1 = self._lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lam_t - lam_s0, lam_s0 - lam_s1
        with np.errstate(divide="ignore", invalid="ignore"):  # h = 0 when sigma repeats
            r0 = h_0 / h
            inv_r0 = _ONE / r0
        d0, d1 = m0, inv_r0 * (m0 - m1)
        e = np.exp(-h) - _ONE
        x = (sigma_t / sigma_s0) * sample - (alpha_t * e) * d0
        if self.config["solver_type"] == "midpoint":
            return x - F32(0.5) * (alpha_t * e) * d1
        with np.errstate(divide="ignore", invalid="ignore"):
            k1 = alpha_t * (e / h + _ONE)
        return x + k1 * d1

    def _third_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lam_t = self._lambda(i + 1)
        _, sigma_s0, lam_s0 = self._lambda(i)
        _, _, lam_s1 = self._lambda(i - 1)
        _, _, lam_s2 = self._lambda(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lam_t - lam_s0, lam_s0 - lam_s1, lam_s1 - lam_s2
        with np.errstate(divide="ignore", invalid="ignore"):
            r0, r1 = h_0 / h, h_1 / h
            c1_0, c1_1 = _ONE / r0, _ONE / r1
            c_r = r0 / (r0 + r1)
            c_2 = _ONE / (r0 + r1)
            e = np.exp(-h) - _ONE
            k1 = alpha_t * (e / h + _ONE)
            k2 = alpha_t * ((e + h) / (h * h) - F32(0.5))
        d1_0, d1_1 = c1_0 * (m0 - m1), c1_1 * (m1 - m2)
        d1 = d1_0 + c_r * (d1_0 - d1_1)
        d2 = c_2 * (d1_0 - d1_1)
        return (sigma_t / sigma_s0) * sample - (alpha_t * e) * m0 + k1 * d1 - k2 * d2


# --------------------------------------------------------------------------- factory

_BY_CLASS: dict[str, type[Scheduler]] = {
    cls.diffusers_class: cls for cls in (DDIM, PNDM, Euler, EulerAncestral, LMS, DPMSolverMultistep)
}

_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
#: public name -> (class, from_config overrides)
_NAMES: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "ddim": (DDIM, {}),
    "pndm": (PNDM, {}),
    "euler": (Euler, {}),
    "euler_a": (EulerAncestral, {}),
    "lms": (LMS, {}),
    "dpmpp_2m": (DPMSolverMultistep, {**_DPMPP_2M, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistep, {**_DPMPP_2M, "use_karras_sigmas": True}),
}


def scheduler_names() -> list[str]:
    """Public names accepted by the ``scheduler`` request field."""
    return list(_NAMES)


def default_scheduler_name(config: dict[str, Any]) -> str | None:
    """Our public name for the class a diffusers config names (None if unsupported)."""
    cls = _BY_CLASS.get(config.get("_class_name"))  # type: ignore[arg-type]
    plain = [n for n, (c, _) in _NAMES.items() if c is cls]
    if not plain:
        return None
    if cls is DPMSolverMultistep:
        return "dpmpp_2m_karras" if config.get("use_karras_sigmas") else "dpmpp_2m"
    return plain[0]


def make_scheduler(config: dict[str, Any], name: str | None = None) -> Scheduler:
    """A fresh scheduler for one row.

    config: a diffusers ``scheduler_config.json`` dict. name None -> the class the config's
    ``_class_name`` names; else one of ``scheduler_names()`` (the config is converted like
    ``XScheduler.from_config(config)``). Raises ValueError for unknown names/classes.
    """
    if name is None:
        cls_name = config.get("_class_name")
        cls = _BY_CLASS.get(cls_name)  # type: ignore[arg-type]
        if cls is None:
            raise SchedulerConfigError(
                f"scheduler class {cls_name!r} is not supported; supported classes: "
                f"{sorted(_BY_CLASS)} (or pass one of the names {scheduler_names()})"
            )
        return cls.from_config(config)
    entry = _NAMES.get(name)
    if entry is None:
        raise SchedulerConfigError(
            f"unknown scheduler {name!r}; use one of: {', '.join(scheduler_names())}"
        )
    cls, overrides = entry
    return cls.from_config(config, **overrides)


def strength_timesteps(
    scheduler: Scheduler, num_inference_steps: int, strength: float
) -> np.ndarray:
    """The timesteps an img2img/inpaint run with ``strength`` uses (diffusers'
    ``StableDiffusionInpaintPipeline.get_timesteps``), and sets the scheduler's begin index.

    Calls ``scheduler.set_timesteps(num_inference_steps)`` first (resetting the instance's
    state), then ``set_begin_index``. Raises ValueError for strength outside (0, 1] or when
    fewer than one step would remain.
    """
    strength = float(strength)
    if not (0.0 < strength <= 1.0):
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = int(num_inference_steps)
    scheduler.set_timesteps(n)
    init = min(int(n * strength), n)
    t_start = max(n - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if len(timesteps) == 0 or n - t_start < 1:
        raise ValueError(
            f"strength {strength} with {n} steps leaves no denoising step; raise strength or "
            "steps so that int(steps * strength) >= 1"
        )
    scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps
