"""Protocol: the request and response shapes of ``POST /v1/images/edits``.

Pure data: no aiohttp, no onnxruntime, nothing of ours. ``parse_edit_fields`` turns the text
fields of a multipart form into a validated ``EditRequest`` or raises ``ProtocolError`` naming
the field, the OpenAI error code and how to fix it. Checks that need a model (its size limits)
happen in serving.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

MAX_N = 10
MAX_PARTIAL_IMAGES = 3
QUALITIES = ("low", "medium", "high", "xhigh", "max", "auto", "standard", "hd")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
RESPONSE_FORMATS = ("b64_json", "url")
SIZE_MULTIPLE = 8


class ProtocolError(ValueError):
    """A request field is wrong. ``code`` is OpenAI's error code (may be None)."""

    def __init__(self, message: str, param: str | None, code: str | None = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class EditRequest(BaseModel):
    """A validated edit request (files are carried separately, as bytes)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    model: str | None = None
    n: int = 1
    size: tuple[int, int] | None = None  # (width, height); None = auto
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int = 100
    background: Literal["transparent", "opaque", "auto"] = "auto"
    quality: str = "auto"
    stream: bool = False
    partial_images: int = 0
    user: str | None = None
    input_fidelity: str | None = None
    # extensions
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    scheduler: str | None = None


def _int(fields: dict[str, str], name: str, lo: int, hi: int, default: int | None) -> int | None:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ProtocolError(f"'{name}' must be an integer, got {raw[:40]!r}.", name) from None
    if value < lo:
        raise ProtocolError(
            f"{value} is less than the minimum of {lo} - '{name}'.", name, "integer_below_min_value"
        )
    if value > hi:
        raise ProtocolError(
            f"{value} is greater than the maximum of {hi} - '{name}'.",
            name,
            "integer_above_max_value",
        )
    return value


def _float(fields: dict[str, str], name: str, lo: float, hi: float) -> float | None:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise ProtocolError(f"'{name}' must be a number, got {raw[:40]!r}.", name) from None
    if not math.isfinite(value) or value < lo or value > hi:
        raise ProtocolError(f"'{name}' must be between {lo} and {hi}, got {raw[:40]!r}.", name)
    return value


def _choice(fields: dict[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value == "jpg" and name == "output_format":
        value = "jpeg"
    if value not in choices:
        raise ProtocolError(
            f"Invalid value {raw[:40]!r} for '{name}'. Supported values are: "
            + ", ".join(f"'{c}'" for c in choices)
            + ".",
            name,
        )
    return value


def _bool(fields: dict[str, str], name: str) -> bool:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ProtocolError(f"'{name}' must be true or false, got {raw[:40]!r}.", name)


def parse_size(raw: str | None) -> tuple[int, int] | None:
    """'auto' / missing -> None; 'WxH' -> (W, H) with both sides positive multiples of 8."""
    if raw is None or raw.strip() == "" or raw.strip().lower() == "auto":
        return None
    text = raw.strip().lower()
    w, sep, h = text.partition("x")
    if not sep or not w.isdecimal() or not h.isdecimal() or len(w) > 6 or len(h) > 6:
        raise ProtocolError(
            f"Invalid size {raw[:40]!r}: use 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto'.", "size"
        )
    width, height = int(w), int(h)
    if width <= 0 or height <= 0 or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise ProtocolError(
            f"Invalid size {raw[:40]!r}: both sides must be positive multiples of {SIZE_MULTIPLE} "
            "(e.g. '512x512', '1024x1024', '1536x1024').",
            "size",
        )
    return width, height


def parse_edit_fields(fields: dict[str, str], max_prompt_chars: int = 32000) -> EditRequest:
    """Validate the text fields of an edit form. Unknown fields are ignored, as OpenAI's are."""
    prompt = fields.get("prompt")
    if prompt is None:
        raise ProtocolError(
            "Missing required parameter: 'prompt'. Describe the edit in a 'prompt' field.",
            "prompt",
            None,
        )
    if prompt.strip() == "":
        raise ProtocolError(
            "'prompt' is empty. Describe the edit in a non-empty 'prompt' field.", "prompt", None
        )
    if len(prompt) > max_prompt_chars:
        raise ProtocolError(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{max_prompt_chars}, but got a string with length {len(prompt)} instead.",
            "prompt",
            "string_above_max_length",
        )
    negative = fields.get("negative_prompt")
    if negative is not None and len(negative) > max_prompt_chars:
        raise ProtocolError(
            f"Invalid 'negative_prompt': longer than {max_prompt_chars} characters.",
            "negative_prompt",
            "string_above_max_length",
        )
    output_format = _choice(fields, "output_format", OUTPUT_FORMATS, "png")
    background = _choice(fields, "background", BACKGROUNDS, "auto")
    if background == "transparent" and output_format == "jpeg":
        raise ProtocolError(
            "background='transparent' needs output_format 'png' or 'webp' (JPEG has no alpha).",
            "background",
        )
    stream = _bool(fields, "stream")
    scheduler = fields.get("scheduler")
    model = fields.get("model")
    return EditRequest(
        prompt=prompt,
        model=model.strip() if model and model.strip() else None,
        n=_int(fields, "n", 1, MAX_N, 1),
        size=parse_size(fields.get("size")),
        response_format=_choice(fields, "response_format", RESPONSE_FORMATS, "b64_json"),
        output_format=output_format,
        output_compression=_int(fields, "output_compression", 0, 100, 100),
        background=background,
        quality=_choice(fields, "quality", QUALITIES, "auto"),
        stream=stream,
        partial_images=_int(fields, "partial_images", 0, MAX_PARTIAL_IMAGES, 0),
        user=fields.get("user"),
        input_fidelity=fields.get("input_fidelity"),
        negative_prompt=negative,
        seed=_int(fields, "seed", 0, 2**63 - 1, None),
        steps=_int(fields, "steps", 1, 150, None),
        guidance_scale=_float(fields, "guidance_scale", 0.0, 30.0),
        strength=_float(fields, "strength", 0.0, 1.0),
        scheduler=scheduler.strip().lower() if scheduler and scheduler.strip() else None,
    )


# ---------------------------------------------------------------- responses


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    """Honest counts: text tokens = the model tokenizer's count for the prompt (plus negative
    prompt); image tokens = latent (or pixel/64 for pixel models) cells read or written."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"]
    output_format: Literal["png", "jpeg", "webp"]
    quality: str
    size: str
    usage: Usage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
