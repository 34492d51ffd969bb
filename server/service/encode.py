"""Finish one image: paste the model's work-size output back, composite (pixels outside the edit
region unchanged), apply the background, encode (png/jpeg/webp); and count usage.

Blocking (runs in a worker thread). Images are uint8 HxWx3 (HxWx4 with transparency).
"""

from __future__ import annotations

import numpy as np

from .. import imaging
from ..protocol import InputTokensDetails, OutputTokensDetails, Usage
from .prepare import PreparedEdit

#: pixels per image token side: one token per 8x8 cell (a latent pixel of SD models)
TOKEN_CELL = 8


def compose(prepared: PreparedEdit, generated: np.ndarray) -> np.ndarray:
    """Paste a work-size uint8 HxWx3 image back; uint8 HxWx3 (or HxWx4) at the output size.

    Only the work box is composited: the edit region lies inside it with at least 32 px of kept
    context on every side that is not the image's border (``imaging.plan_work_region``), more
    than the seam feather reaches, so the result equals compositing the whole canvas."""
    x0, y0, x1, y1 = prepared.box
    out = np.ascontiguousarray(prepared.canvas[:, :, :3])  # a copy: the canvas is RGBA
    out[y0:y1, x0:x1] = imaging.composite(
        out[y0:y1, x0:x1],
        imaging.resize_image(generated, x1 - x0, y1 - y0),
        prepared.edit[y0:y1, x0:x1],
    )
    alpha = prepared.canvas[:, :, 3] if prepared.had_transparency else None
    req = prepared.request
    return imaging.apply_background(out, alpha, prepared.edit, req.background, req.output_format)


def render(prepared: PreparedEdit, generated: np.ndarray) -> tuple[bytes, str]:
    """compose + encode one work-size image -> (file bytes, "transparent" | "opaque")."""
    composed = compose(prepared, generated)
    transparent = composed.ndim == 3 and composed.shape[2] == 4
    req = prepared.request
    encoded = imaging.encode(composed, req.output_format, compression=req.output_compression)
    return encoded, "transparent" if transparent else "opaque"


def usage(prepared: PreparedEdit) -> Usage:
    """Text tokens: the model tokenizer's count of prompt (+ negative prompt); image tokens: one
    per 8x8 cell of the work image read, and of each of the n images written."""
    req, model = prepared.request, prepared.model
    text = model.count_tokens(req.prompt)
    if req.negative_prompt:
        text += model.count_tokens(req.negative_prompt)
    work = prepared.rows[0].image.shape
    cells = (work[0] // TOKEN_CELL) * (work[1] // TOKEN_CELL)
    out = cells * req.n
    return Usage(
        input_tokens=text + cells,
        output_tokens=out,
        total_tokens=text + cells + out,
        input_tokens_details=InputTokensDetails(text_tokens=text, image_tokens=cells),
        output_tokens_details=OutputTokensDetails(image_tokens=out),
    )


def image_usage(total: Usage, n: int, index: int) -> Usage:
    """Image ``index``'s share of a request's usage (stream events): its own output tokens, and
    the request's input tokens on image 0 only, so that the shares add up to ``total``."""
    out = total.output_tokens // n
    first = index == 0
    inputs = total.input_tokens if first else 0
    details = (
        total.input_tokens_details if first else InputTokensDetails(text_tokens=0, image_tokens=0)
    )
    return Usage(
        input_tokens=inputs,
        output_tokens=out,
        total_tokens=inputs + out,
        input_tokens_details=details,
        output_tokens_details=OutputTokensDetails(image_tokens=out),
    )
