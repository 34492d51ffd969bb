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

Layout (adding a scheduler family = one module + one line in ``_NAMES`` below):
- ``base``: ``Scheduler``, ``StepOutput``, ``NoiseSource`` / ``NumpyNoise``,
  ``SchedulerConfigError`` and the float32 helpers that reproduce torch's arithmetic.
- ``alpha_bar``: the family indexed by integer training timestep; ``ddim``, ``pndm``.
- ``sigma``: the family stepping through a sigma table; ``euler`` (Euler, Euler ancestral),
  ``lms``, ``dpm_solver`` (DPM++ 2M, Karras variant).
- ``lcm``, ``tcd``: few-step samplers of consistency-distilled models (LCM-LoRA, TCD-LoRA),
  on the distillation schedule (at most ``original_inference_steps`` = 50 steps).
- this module: the registry of public names and ``strength_timesteps``.

Batching: ``Scheduler.step_batch`` advances rows whose schedulers share a ``batch_key`` with
one array operation per update term; ``step`` is the one-row case of the same code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import NoiseSource, NumpyNoise, Scheduler, SchedulerConfigError, StepOutput
from .ddim import DDIM
from .dpm_solver import DPMSolverMultistep
from .euler import Euler, EulerAncestral
from .lcm import LCM
from .lms import LMS
from .pndm import PNDM
from .tcd import TCD

__all__ = [
    "DDIM",
    "DPMSolverMultistep",
    "Euler",
    "EulerAncestral",
    "LCM",
    "LMS",
    "PNDM",
    "TCD",
    "NoiseSource",
    "NumpyNoise",
    "Scheduler",
    "SchedulerConfigError",
    "StepOutput",
    "batch_groups",
    "default_scheduler_name",
    "make_scheduler",
    "scheduler_names",
    "strength_timesteps",
]

_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
#: public name -> (class, from_config overrides): the one table of our schedulers.
_NAMES: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "ddim": (DDIM, {}),
    "pndm": (PNDM, {}),
    "euler": (Euler, {}),
    "euler_a": (EulerAncestral, {}),
    "lms": (LMS, {}),
    "dpmpp_2m": (DPMSolverMultistep, {**_DPMPP_2M, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistep, {**_DPMPP_2M, "use_karras_sigmas": True}),
    "lcm": (LCM, {}),
    "tcd": (TCD, {}),
}

#: diffusers ``_class_name`` -> our class (for ``make_scheduler(config)`` without a name)
_BY_CLASS: dict[str, type[Scheduler]] = {cls.diffusers_class: cls for cls, _ in _NAMES.values()}


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


def batch_groups(
    schedulers: list[Scheduler], timesteps: list[Any]
) -> list[tuple[slice | np.ndarray, list[int]]]:
    """Rows that one ``step_batch`` call can advance: [(selector, row indices)], rows grouped
    by ``batch_key`` at their timesteps, in first-row order. The selector indexes the stacked
    rows: a slice when the group's rows are contiguous (views, no gather), else an index array.
    """
    if len(schedulers) == 1:
        return [(slice(0, 1), [0])]
    groups: dict[Any, list[int]] = {}
    for i, (s, t) in enumerate(zip(schedulers, timesteps, strict=True)):
        groups.setdefault(s.batch_key(t), []).append(i)
    out: list[tuple[slice | np.ndarray, list[int]]] = []
    for idx in groups.values():
        contiguous = idx[-1] - idx[0] + 1 == len(idx)
        out.append((slice(idx[0], idx[-1] + 1) if contiguous else np.asarray(idx), idx))
    return out
