"""What a model can do, declared once by the model itself.

``service/validate.py`` checks every request against these declarations before anything is
queued; ``GET /v1/models`` shows them (``Capabilities.card``) and ``/openapi.json`` takes its
extension-field ranges from them. Nothing else restates a model's bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..protocol import TIERS, ProtocolError, Range


@dataclass(frozen=True)
class ModelLimits:
    """Sizes in pixels.

    min_side / max_side bound the *output* ``size`` a client may ask for. The model itself only
    ever sees a work image whose longer side is at most ``max_work_side`` (serving crops around
    the edit region and rescales, see ``imaging.plan_work_region``); ``native_side`` is the
    resolution it was trained at. Work sides are multiples of ``multiple``.
    """

    min_side: int = 64
    max_side: int = 4096
    native_side: int = 512
    max_work_side: int = 768
    multiple: int = 8


@dataclass(frozen=True)
class Preset:
    """What one quality tier runs. ``steps`` always; a few-step distilled recipe (LCM / TCD)
    also names its ``scheduler`` and ``guidance_scale`` (<= 1: one UNet row per image), and
    ``tiny_vae`` = decode the final image with the tiny autoencoder. Values a request sets
    explicitly win over the preset's."""

    steps: int
    scheduler: str | None = None
    guidance_scale: float | None = None
    tiny_vae: bool = False


@dataclass(frozen=True)
class Settings:
    """The sampling values one request runs with (defaults and quality preset applied)."""

    steps: int
    guidance_scale: float
    strength: float
    scheduler: str | None  # None = the model's default scheduler
    tiny_vae: bool = False  # final decode with the tiny autoencoder (fast preset)


@dataclass(frozen=True)
class Sampling:
    """The diffusion knobs a model reads from the extension fields, with their ranges.

    ``quality_presets`` maps each quality tier ("low", "medium", "high") to a ``Preset``; the
    "medium" preset is the default. Guidance <= 1 turns classifier-free guidance off.
    """

    steps: Range
    guidance_scale: Range
    strength: Range
    schedulers: tuple[str, ...]
    default_scheduler: str | None
    default_guidance_scale: float
    quality_presets: Mapping[str, Preset]
    #: schedulers that run fewer steps than ``steps`` allows (distilled ones: LCM, TCD)
    max_steps: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.quality_presets) != set(TIERS):
            raise ValueError(f"quality_presets needs exactly the tiers {TIERS}")

    @property
    def default_steps(self) -> int:
        return self.quality_presets["medium"].steps

    def resolve(
        self,
        *,
        tier: str = "medium",
        steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        scheduler: str | None = None,
    ) -> Settings:
        """Concrete settings, or ``ProtocolError`` naming the field that is out of range."""
        preset = self.quality_presets[tier]
        steps = preset.steps if steps is None else int(self.steps.check("steps", steps))
        g = next(
            v
            for v in (guidance_scale, preset.guidance_scale, self.default_guidance_scale)
            if v is not None
        )
        g = float(self.guidance_scale.check("guidance_scale", g))
        s = float(self.strength.check("strength", 1.0 if strength is None else strength))
        if int(steps * s) < 1:
            raise ProtocolError(
                f"steps * strength must be at least 1 (got {steps} * {s:g}); raise steps or "
                "strength.",
                "strength",
            )
        if scheduler is not None and scheduler not in self.schedulers:
            raise ProtocolError(
                f"Unknown scheduler '{scheduler[:40]}'. Supported: {', '.join(self.schedulers)}.",
                "scheduler",
            )
        used = scheduler or preset.scheduler or self.default_scheduler
        cap = self.max_steps.get(used)
        if cap is not None and steps > cap:
            raise ProtocolError(
                f"{steps} is greater than the maximum of {cap} - 'steps' (the '{used}' scheduler "
                f"runs at most {cap} steps; few-step sampling uses 2-8).",
                "steps",
                "integer_above_max_value",
            )
        return Settings(steps, g, s, scheduler or preset.scheduler, preset.tiny_vae)


@dataclass(frozen=True)
class Capabilities:
    """A model's declaration: sizes, whether it reads the prompt, whether it streams real
    previews, and (diffusion models) its sampling knobs. Single-pass models have no
    ``sampling``: they ignore the sampling extension fields, as unknown fields are ignored."""

    limits: ModelLimits
    reads_prompt: bool
    streams_previews: bool
    sampling: Sampling | None = None

    def settings(self, **values) -> Settings | None:
        """``Sampling.resolve(**values)``; None for models without sampling knobs."""
        return None if self.sampling is None else self.sampling.resolve(**values)

    def card(self) -> dict:
        """The capabilities as ``GET /v1/models`` shows them (JSON-ready)."""
        lim = self.limits
        out: dict = {
            "reads_prompt": self.reads_prompt,
            "streams_previews": self.streams_previews,
            "sizes": {
                "min_side": lim.min_side,
                "max_side": lim.max_side,
                "native_side": lim.native_side,
                "max_work_side": lim.max_work_side,
                "multiple": lim.multiple,
            },
        }
        s = self.sampling
        if s is not None:
            out["parameters"] = {
                "steps": {**s.steps.schema(), "default": s.default_steps},
                "guidance_scale": {
                    **s.guidance_scale.schema(),
                    "default": s.default_guidance_scale,
                },
                "strength": {**s.strength.schema(), "default": 1.0},
            }
            out["schedulers"] = list(s.schedulers)
            out["max_steps_by_scheduler"] = dict(s.max_steps)
            out["default_scheduler"] = s.default_scheduler
            out["quality_presets"] = {
                tier: {k: v for k, v in vars(p).items() if v is not None}
                for tier, p in s.quality_presets.items()
            }
        return out
