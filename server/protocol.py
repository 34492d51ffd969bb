"""Protocol: OpenAI's shapes and bounds for ``POST /v1/images/edits``.

Pure data: no aiohttp, no onnxruntime, nothing of ours. This module owns OpenAI's bounds (n,
partial images, prompt length, formats, quality values) and the ``Range`` type models use to
declare their own (``models/capabilities.py``). ``parse_edit_fields`` turns the text fields of a
form into an ``EditRequest`` or raises ``ProtocolError`` naming the field, the OpenAI error code
and how to fix it. Checks that need a model (its ranges, sizes, schedulers) happen once in
``service/validate.py``. Responses: ``ImagesResponse`` (JSON) and the stream events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

# ---------------------------------------------------------------- OpenAI's bounds (the one owner)

MAX_N = 10
MAX_PARTIAL_IMAGES = 3
MAX_PROMPT_CHARS = 32000
MAX_IMAGES = 16
SIZE_MULTIPLE = 8
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
RESPONSE_FORMATS = ("b64_json", "url")
#: every ``quality`` value an SDK sends -> the tier a model has a preset for (one hop).
QUALITY_TIERS = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "auto": "medium",
    "standard": "medium",
    "hd": "high",
    "xhigh": "high",
    "max": "high",
}
QUALITIES = tuple(QUALITY_TIERS)
TIERS = ("low", "medium", "high")
INPUT_FIDELITIES = ("low", "high")
#: OpenAI's content-moderation levels: accepted and validated; this server runs no moderation
#: model, so both mean the same here (docs/api.md)
MODERATIONS = ("auto", "low")
COMPLEXITIES = ("low", "medium", "high")
#: formats and options of OpenAI's that inpainting models do not produce (a clear 400 each)
UNSUPPORTED_OUTPUTS = ("gif", "svg")
UNSUPPORTED_FIELDS = ("frame_count", "frame_duration_ms", "svg")
#: end-user ids and other echoed strings are kept (logs, responses) to this many characters
MAX_ECHO_CHARS = 128


class ProtocolError(ValueError):
    """A request field is wrong. ``code`` is OpenAI's error code (None: the HTTP layer's
    default 400 code, ``errors.DEFAULT_400_CODE``: every 400 carries one)."""

    def __init__(self, message: str, param: str | None, code: str | None = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Range:
    """A numeric bound, declared once and used to check values, to describe them in error
    messages and in the OpenAPI document. ``integer`` ranges use OpenAI's integer codes."""

    lo: float
    hi: float
    integer: bool = False
    lo_exclusive: bool = False

    def describe(self) -> str:
        lo = f"{self.lo:g}" if not self.integer else str(int(self.lo))
        hi = f"{self.hi:g}" if not self.integer else str(int(self.hi))
        return f"from {lo} to {hi}" if not self.lo_exclusive else f"in ({lo}, {hi}]"

    def check(self, name: str, value: float) -> float:
        """``value`` if inside, else ProtocolError naming ``name``."""
        if self.integer:
            if value != int(value):
                raise ProtocolError(f"'{name}' must be an integer, got {value!r}.", name)
            if value < self.lo:
                raise ProtocolError(
                    f"{value} is less than the minimum of {int(self.lo)} - '{name}'.",
                    name,
                    "integer_below_min_value",
                )
            if value > self.hi:
                raise ProtocolError(
                    f"{value} is greater than the maximum of {int(self.hi)} - '{name}'.",
                    name,
                    "integer_above_max_value",
                )
            return value
        below = value <= self.lo if self.lo_exclusive else value < self.lo
        if not math.isfinite(value) or below or value > self.hi:
            raise ProtocolError(f"'{name}' must be {self.describe()}, got {value!r}.", name)
        return value

    def schema(self) -> dict:
        """OpenAPI 3.0 keywords (exclusiveMinimum is a boolean there)."""
        out: dict = {"type": "integer" if self.integer else "number"}
        out["minimum"] = int(self.lo) if self.integer else self.lo
        out["maximum"] = int(self.hi) if self.integer else self.hi
        if self.lo_exclusive:
            out["exclusiveMinimum"] = True
        return out


N = Range(1, MAX_N, integer=True)
PARTIAL_IMAGES = Range(0, MAX_PARTIAL_IMAGES, integer=True)
OUTPUT_COMPRESSION = Range(0, 100, integer=True)
SEED = Range(0, 2**63 - 1, integer=True)


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
    #: extension: with ``stream``, also send ``ProgressEvent``s (the playground's progress bar)
    stream_progress: bool = False
    user: str | None = None
    #: the newest SDKs' end-user id; replaces ``user`` (see ``end_user``)
    safety_identifier: str | None = None
    input_fidelity: str | None = None
    complexity: str | None = None
    moderation: str | None = None
    # extensions
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    scheduler: str | None = None

    @property
    def end_user(self) -> str | None:
        """The end-user id for accounting, rate limits and logs: ``safety_identifier`` when
        non-empty, else
        ``user`` (as OpenAI resolves them), at most ``MAX_ECHO_CHARS`` characters."""
        value = self.safety_identifier or self.user
        return value[:MAX_ECHO_CHARS] if value else None

    @property
    def end_user_field(self) -> str:
        """The field ``end_user`` came from (named in messages such as the per-user 429)."""
        return "safety_identifier" if self.safety_identifier else "user"

    @property
    def quality_tier(self) -> str:
        """ "low" | "medium" | "high": the preset a model runs for this ``quality``."""
        return QUALITY_TIERS[self.quality]


def _given(fields: dict[str, str], name: str) -> str | None:
    """The field's text, stripped; None when absent or blank (blank means "default", as the
    SDKs send empty strings for unset form fields)."""
    raw = fields.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def _int(fields: dict[str, str], name: str, bound: Range | None, default: int | None) -> int | None:
    """An integer field; ``bound`` None = any integer (a model's capabilities bound it later)."""
    raw = _given(fields, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(f"'{name}' must be an integer, got {raw[:40]!r}.", name) from None
    return value if bound is None else int(bound.check(name, value))


def _number(fields: dict[str, str], name: str) -> float | None:
    """A finite number; its range is the model's (see ``models.capabilities``)."""
    raw = _given(fields, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolError(f"'{name}' must be a number, got {raw[:40]!r}.", name) from None
    if not math.isfinite(value):
        raise ProtocolError(f"'{name}' must be a finite number, got {raw[:40]!r}.", name)
    return value


def _choice(
    fields: dict[str, str], name: str, choices: tuple[str, ...], default: str | None
) -> str | None:
    raw = _given(fields, name)
    if raw is None:
        return default
    value = raw.lower()
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
    raw = _given(fields, name)
    if raw is None:
        return False
    value = raw.lower()
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


def _refuse_unsupported_outputs(fields: dict[str, str]) -> None:
    """GIF/SVG output and their options: inpainting models make one still raster image."""
    fmt = (_given(fields, "output_format") or "").lower()
    if fmt in UNSUPPORTED_OUTPUTS:
        raise ProtocolError(
            f"output_format '{fmt}' is not produced by this server's inpainting models. "
            f"Supported: {', '.join(OUTPUT_FORMATS)}.",
            "output_format",
        )
    for name in fields:
        base = name.split("[", 1)[0]
        if base in UNSUPPORTED_FIELDS:
            raise ProtocolError(
                f"'{name[:40]}' applies to GIF/SVG output, which this server does not produce "
                f"(output_format: {', '.join(OUTPUT_FORMATS)}). Remove it.",
                base,
            )


#: every field ``parse_edit_fields`` reads (tests/server/test_protocol_fields.py checks it): all
#: that an async job stores of a request, since the others are ignored
EDIT_FIELDS = (
    "prompt",
    "negative_prompt",
    "model",
    "n",
    "size",
    "response_format",
    "output_format",
    "output_compression",
    "background",
    "quality",
    "moderation",
    "stream",
    "partial_images",
    "stream_progress",
    "user",
    "safety_identifier",
    "input_fidelity",
    "complexity",
    "seed",
    "steps",
    "guidance_scale",
    "strength",
    "scheduler",
)


def parse_edit_fields(
    fields: dict[str, str], max_prompt_chars: int = MAX_PROMPT_CHARS
) -> EditRequest:
    """Validate the text fields of an edit form. Unknown fields are ignored, as OpenAI's are."""
    prompt = fields.get("prompt")
    if prompt is None:
        raise ProtocolError(
            "Missing required parameter: 'prompt'. Describe the edit in a 'prompt' field.",
            "prompt",
            "missing_required_parameter",
        )
    if prompt.strip() == "":
        raise ProtocolError(
            "'prompt' is empty. Describe the edit in a non-empty 'prompt' field.",
            "prompt",
            "empty_string",
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
    _refuse_unsupported_outputs(fields)
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
        n=_int(fields, "n", N, 1),
        size=parse_size(fields.get("size")),
        response_format=_choice(fields, "response_format", RESPONSE_FORMATS, "b64_json"),
        output_format=output_format,
        output_compression=_int(fields, "output_compression", OUTPUT_COMPRESSION, 100),
        background=background,
        quality=_choice(fields, "quality", QUALITIES, "auto"),
        stream=stream,
        partial_images=_int(fields, "partial_images", PARTIAL_IMAGES, 0),
        stream_progress=_bool(fields, "stream_progress"),
        user=_given(fields, "user"),
        safety_identifier=_given(fields, "safety_identifier"),
        input_fidelity=_choice(fields, "input_fidelity", INPUT_FIDELITIES, None),
        complexity=_choice(fields, "complexity", COMPLEXITIES, None),
        moderation=_choice(fields, "moderation", MODERATIONS, None),
        negative_prompt=negative,
        seed=_int(fields, "seed", SEED, None),
        steps=_int(fields, "steps", None, None),
        guidance_scale=_number(fields, "guidance_scale"),
        strength=_number(fields, "strength"),
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


class OutputTokensDetails(BaseModel):
    image_tokens: int
    text_tokens: int = 0


class Usage(BaseModel):
    """Honest counts: text tokens = the model tokenizer's count for the prompt (plus negative
    prompt); image tokens = latent (or pixel/64 for pixel models) cells read or written."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails | None = None


class ImagesResponse(BaseModel):
    """The JSON body of a successful edit (n items in ``data``)."""

    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"]
    output_format: Literal["png", "jpeg", "webp"]
    quality: str
    size: str
    usage: Usage
    #: the end-user id the request was accounted to (``safety_identifier``, else ``user``)
    safety_identifier: str | None = None


class _ImageEvent(BaseModel):
    b64_json: str
    background: Literal["transparent", "opaque"]
    created_at: int
    output_format: Literal["png", "jpeg", "webp"]
    quality: str
    size: str
    #: extension: which of the request's n images (0-based) the event belongs to
    image_index: int = 0


class PartialImageEvent(_ImageEvent):
    """SSE ``image_edit.partial_image``: a preview while the image is being made."""

    type: Literal["image_edit.partial_image"] = "image_edit.partial_image"
    partial_image_index: int


class CompletedEvent(_ImageEvent):
    """SSE ``image_edit.completed``: one final image. ``usage`` is this image's share: the
    request's input tokens are counted on the first completed event only, so the events' usages
    add up to the request's (the JSON response's) usage."""

    type: Literal["image_edit.completed"] = "image_edit.completed"
    usage: Usage
    safety_identifier: str | None = None


class ProgressEvent(BaseModel):
    """SSE ``image_edit.progress`` (extension, only when the request sets ``stream_progress``:
    OpenAI's stream has no such event): denoising steps done and planned over all the
    request's images; a single-pass model's image counts as one step."""

    type: Literal["image_edit.progress"] = "image_edit.progress"
    steps_done: int
    steps_total: int
    created_at: int


StreamEvent = PartialImageEvent | CompletedEvent | ProgressEvent


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
