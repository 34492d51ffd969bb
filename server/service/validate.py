"""Check a request against the chosen model's declared capabilities and the server's limits,
once, before anything is decoded further or queued.

Every failure is a ``ProtocolError`` naming the field (``param``) and OpenAI's code.
"""

from __future__ import annotations

from ..config import Limits
from ..models.base import InpaintModel
from ..models.capabilities import ModelLimits, Settings
from ..protocol import EditRequest, ProtocolError


def check_request(request: EditRequest, model: InpaintModel, image_count: int, limits: Limits):
    """What can be checked before decoding: image count, explicit size, sampling values.

    Returns the model's sampling ``Settings`` (None for single-pass models)."""
    if image_count == 0:
        raise ProtocolError(
            "Missing required parameter: 'image'. Upload the image to edit.",
            "image",
            "missing_required_parameter",
        )
    if image_count > limits.max_images:
        raise ProtocolError(
            f"Too many images: {image_count}; at most {limits.max_images} are accepted.", "image"
        )
    caps = model.capabilities
    if request.size is not None:
        _check_size(request.size, caps.limits, model.name)
    return caps.settings(
        tier=request.quality_tier,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        strength=request.strength,
        scheduler=request.scheduler,
    )


def _check_size(size: tuple[int, int], lim: ModelLimits, model_name: str) -> None:
    w, h = size
    if not (lim.min_side <= w <= lim.max_side and lim.min_side <= h <= lim.max_side):
        raise ProtocolError(
            f"Invalid size '{w}x{h}': each side must be between {lim.min_side} and "
            f"{lim.max_side} for model '{model_name}'. Use one of those sides, or 'auto'.",
            "size",
            "invalid_value",
        )


def output_size(request: EditRequest, lim: ModelLimits, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the output. 'auto' keeps the input's size, scaled down (aspect kept,
    sides multiples of ``lim.multiple``) only if it exceeds the model's max side."""
    if request.size is not None:
        return request.size
    if max(width, height) <= lim.max_side and min(width, height) >= lim.min_side:
        return width, height
    scale = min(lim.max_side / max(width, height), 1.0)
    w = max(lim.min_side, int(width * scale) // lim.multiple * lim.multiple)
    h = max(lim.min_side, int(height * scale) // lim.multiple * lim.multiple)
    return w, h


def check_request_pixels(n: int, width: int, height: int, limits: Limits) -> None:
    """n x output size against the server's per-request pixel budget."""
    if n * width * height > limits.max_request_pixels:
        raise ProtocolError(
            f"n x size is {n} x {width}x{height} pixels, over this server's limit of "
            f"{limits.max_request_pixels} pixels per request. Lower n or size.",
            "n",
            "image_too_large",
        )


__all__ = ["Settings", "check_request", "check_request_pixels", "output_size"]
