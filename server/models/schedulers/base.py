"""The scheduler base class, its data types and the float32 helpers every family shares.

``Scheduler`` is stateful, one instance per image row; see the package docstring. Each family
writes its update once, in ``step_batch``, over rows stacked on the batch axis with per-row
coefficients shaped (G, 1, 1, 1); ``step`` is ``step_batch`` of one row. Per-row coefficients
are computed with the same float32 scalar arithmetic as before stacking, so a row gives the
same bits alone and stacked with others.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
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


def _predicted_x0(
    prediction_type: str, model_output: np.ndarray, sample: np.ndarray, a_t: Any, b_t: Any
) -> np.ndarray:
    """The x0 estimate of the alpha-bar schedulers (DDIM, PNDM, LCM, TCD) for diffusers' three
    prediction types; ``a_t`` = alpha_bar at t and ``b_t`` = 1 - a_t, float32 per row."""
    if prediction_type == "epsilon":
        return (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
    if prediction_type == "sample":
        return model_output
    return np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output  # v_prediction


def _predicted_eps(
    prediction_type: str,
    model_output: np.ndarray,
    sample: np.ndarray,
    x0: np.ndarray,
    a_t: Any,
    b_t: Any,
) -> np.ndarray:
    """The noise estimate that goes with ``_predicted_x0``'s ``x0`` (DDIM's and TCD's direction
    towards the next sample); same float32 inputs."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - np.sqrt(a_t) * x0) / np.sqrt(b_t)
    return np.sqrt(a_t) * model_output + np.sqrt(b_t) * sample  # v_prediction


def _clip_x0(x0: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """diffusers' ``thresholding`` (dynamic, per row) or else ``clip_sample`` of an x0 estimate,
    as the scheduler config says (DDIM, LCM); float32."""
    if config["thresholding"]:
        return _threshold(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config["clip_sample"]:
        r = F32(config["clip_sample_range"])
        return np.clip(x0, -r, r)
    return x0


def _as_int(t: Any) -> int:
    if isinstance(t, (int, np.integer)):
        return int(t)
    return int(np.asarray(t).reshape(-1)[0])


def _per_row(values: Any, ndim: int) -> np.ndarray | np.float32:
    """Flattened per-row coefficients shaped to broadcast over (batch, ...) of ``ndim`` dims.

    One value stays a float32 scalar: the same result bits, and numpy's scalar arithmetic on
    coefficients is several times cheaper than on tiny arrays (a lone row's step)."""
    if isinstance(values, (list, tuple)) and len(values) == 1:
        return F32(values[0])
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if v.size == 1:
        return v[0]
    return v.reshape((-1,) + (1,) * (ndim - 1))


def _columns(rows: Sequence[Sequence[Any]], ndim: int) -> list[Any]:
    """Per-row tuples of float32 scalars -> one ``_per_row`` coefficient per tuple position.
    Coefficients are derived per row in scalar arithmetic first: numpy ops on tiny (G, 1, 1, 1)
    arrays cost ~10x a scalar op, and the bits are the same either way."""
    return [_per_row(col, ndim) for col in zip(*rows, strict=True)]


def _row_slices(x: np.ndarray, rows: int) -> list[np.ndarray]:
    """``x`` split on the batch axis into ``rows`` equal views (one per scheduler; a lone
    scheduler may own a batch of several images, as in ``step`` on a (2, ...) array)."""
    k = x.shape[0] // rows
    return [x[i * k : (i + 1) * k] for i in range(rows)]


def _stack(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Per-row arrays concatenated on the batch axis (a lone part is returned as is)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _same_branch(values: Sequence[Any], who: str) -> Any:
    """The branch every row of a ``step_batch`` call takes; ValueError when they differ (the
    caller grouped rows without ``batch_key``)."""
    if any(v != values[0] for v in values):
        raise ValueError(f"{who}: rows at different solver branches; group them by batch_key")
    return values[0]


def _draw(noises: Sequence[NoiseSource | None], shape: tuple[int, ...], who: str) -> np.ndarray:
    """One standard-normal block per row (each from the row's own source, shape ``shape``
    split evenly between the rows), stacked on the batch axis. float32."""
    if any(n is None for n in noises):
        raise ValueError(f"{who} steps draw noise: pass a NoiseSource for every row")
    k = shape[0] // len(noises)
    return _stack([_f32(n.randn((k,) + tuple(shape[1:]))) for n in noises])  # type: ignore[union-attr]


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
    """Base class; one instance per image row (stateful). See the package docstring."""

    diffusers_class: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    order: int = 1
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
        #: class and configuration as one orderable string: rows whose schedulers have equal
        #: keys may share ``step_batch`` calls (the server keeps such rows adjacent)
        self.config_key = f"{type(self).__name__}:{sorted(self.config.items())!r}"

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

    def step(
        self,
        model_output: np.ndarray,
        timestep: Any,
        sample: np.ndarray,
        noise: NoiseSource | None = None,
    ) -> StepOutput:
        return type(self).step_batch([self], model_output, [timestep], sample, [noise])

    # -- batched API (several rows, one array operation) ----------------------------------
    def batch_key(self, timestep: Any) -> Hashable:
        """Rows whose schedulers give equal keys at their current timesteps may be advanced by
        one ``step_batch`` / ``scale_model_input_batch`` call: same class and configuration and
        (multistep families, which override this) a state taking the same branch. Pure."""
        return self.config_key

    @classmethod
    def scale_model_input_batch(
        cls, schedulers: Sequence[Scheduler], sample: np.ndarray, timesteps: Sequence[Any]
    ) -> np.ndarray:
        """Diffusers' ``scale_model_input`` for stacked rows: ``sample`` float32 (G, C, h, w),
        row i belonging to ``schedulers[i]`` at ``timesteps[i]``. Base: no scaling (``sample``
        is returned as is, not copied)."""
        return _f32(sample)

    @classmethod
    def step_batch(
        cls,
        schedulers: Sequence[Scheduler],
        model_output: np.ndarray,
        timesteps: Sequence[Any],
        sample: np.ndarray,
        noises: Sequence[NoiseSource | None],
    ) -> StepOutput:
        """``step`` of stacked rows (float32 (G, C, h, w); row i belongs to ``schedulers[i]``
        at ``timesteps[i]`` and draws from ``noises[i]``); every scheduler has the same
        ``batch_key``. Advances each scheduler's state. The caller may overwrite
        ``model_output`` and ``sample`` afterwards: a scheduler copies what it keeps."""
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before stepping")

    @property
    def max_steps(self) -> int:
        """The most inference steps this scheduler (with its config) can run."""
        return int(self.config["num_train_timesteps"])

    def _check_steps(self, n: int) -> int:
        n = int(n)
        if n < 1 or n > int(self.config["num_train_timesteps"]):
            raise ValueError(
                f"num_inference_steps must be between 1 and "
                f"{self.config['num_train_timesteps']}, got {n}"
            )
        return n
