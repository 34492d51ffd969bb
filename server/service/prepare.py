"""Prepare one edit: decode the uploads, build the edit region, pick the output size and the work
region (crop rule), and split the request into the model's rows.

    image + mask bytes -> canvas uint8 HxWx4 RGBA (output size: scaled to cover it and
      centre-cropped when its aspect ratio differs, ``imaging.cover_box``) + edit float32 HxW {0, 1}
      -> work region (box in canvas pixels) -> n rows at the work size

Blocking (runs in a worker thread). Raises ``ProtocolError`` for anything the client must fix.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np

from .. import imaging
from ..config import Limits
from ..models.base import InpaintModel, Row
from ..models.capabilities import Settings
from ..protocol import EditRequest, ProtocolError
from .admission import Reservation, edit_bytes
from .validate import check_request, check_request_pixels, output_size

log = logging.getLogger("server.service")

#: formats accepted for the first image and for extra images; masks may be any decodable image
IMAGE_FORMATS = ("png", "jpeg", "webp")
MASK_FORMATS = ("png", "jpeg", "webp", "bmp", "gif", "tiff")
#: a markup is "a transparent PNG" (WebP carries alpha too)
MARKUP_FORMATS = ("png", "webp")


@dataclass
class Upload:
    """One uploaded file part: the form field it came in and its bytes."""

    field: str
    data: bytes


@dataclass
class Uploads:
    """The files of one request: images in order (the first is edited), mask, markup."""

    images: list[Upload]
    mask: Upload | None = None
    markup: Upload | None = None


@dataclass
class PreparedEdit:
    """Everything computed before the model runs.

    canvas: uint8 HxWx4 RGBA of the input at the output size; edit: float32 HxW {0,1} there.
    box: the work region in canvas pixels; rows: the model's inputs (work size).
    """

    request: EditRequest
    model: InpaintModel
    canvas: np.ndarray
    had_transparency: bool
    edit: np.ndarray
    box: tuple[int, int, int, int]
    rows: list[Row]
    #: time.perf_counter() when the request's work began (for the latency metric)
    started: float = 0.0

    @property
    def size(self) -> str:
        return f"{self.canvas.shape[1]}x{self.canvas.shape[0]}"

    @property
    def quality(self) -> str:
        return self.request.quality_tier


def image_error(err: imaging.ImageError, param: str) -> ProtocolError:
    return ProtocolError(f"Invalid '{param}': {err}", param, err.code)


def prepare_edit(
    request: EditRequest,
    model: InpaintModel,
    uploads: Uploads,
    limits: Limits,
    reservation: Reservation | None = None,
) -> PreparedEdit:
    """Validate, reserve memory, decode and crop; the rows carry the resolved sampling
    settings. The reservation grows by ``admission.edit_bytes`` (from the first image's header)
    before anything is decoded."""
    images = uploads.images
    settings = check_request(request, model, len(images), limits)
    if uploads.markup is not None and uploads.mask is not None:
        raise ProtocolError(
            "'markup' cannot be combined with 'mask': send one of them (markup strokes mark "
            "the region to edit; a mask marks it by transparency).",
            "markup",
        )
    first, *extra = images
    lim = model.capabilities.limits
    try:
        info = imaging.probe(first.data)
        out_w, out_h = output_size(request, lim, info.width, info.height)
        check_request_pixels(request.n, out_w, out_h, limits)
        if reservation is not None:
            pixels = info.width * info.height
            reservation.add(
                edit_bytes(min(pixels, limits.max_image_pixels), out_w * out_h, request.n)
            )
        rgba, transparent = imaging.decode(first.data, max_pixels=limits.max_image_pixels)
    except imaging.ImageError as err:
        raise image_error(err, "image") from None
    _check_extra_images(extra)
    if extra:
        log.info(
            "model %s edits the first of %d images; the others are ignored", model.name, len(images)
        )
    height, width = rgba.shape[:2]
    guide = None  # what the model sees inside the work region, if not the image itself
    if uploads.markup is not None:
        edit, guide = markup_region(rgba, uploads.markup, limits)
    else:
        edit = edit_region(rgba, uploads.mask, limits)
    if (out_w, out_h) != (width, height):
        # the size rule (imaging.cover_box): scale to cover, cut the overflow, never stretch
        x0, y0, x1, y1 = imaging.cover_box(width, height, out_w, out_h)

        def fit(a: np.ndarray, resize) -> np.ndarray:
            return resize(np.ascontiguousarray(a[y0:y1, x0:x1]), out_w, out_h)

        rgba = fit(rgba, imaging.resize_image)
        edit = fit(edit, imaging.resize_mask)
        guide = None if guide is None else fit(guide, imaging.resize_image)
        if not edit.any():
            raise ProtocolError(
                f"The edit region vanished at the requested size {out_w}x{out_h}: the input is "
                "scaled to cover that size and centre-cropped, and the region was cut off or "
                "too small. Use a size with the image's aspect ratio ('auto'), a larger mask "
                "region or a larger size.",
                "mask",
                "invalid_mask",
            )
    region = imaging.plan_work_region(
        edit, native_side=lim.native_side, max_work_side=lim.max_work_side, multiple=lim.multiple
    )
    x0, y0, x1, y1 = region.box
    seen = rgba[:, :, :3] if guide is None else guide
    work_rgb = imaging.resize_image(
        np.ascontiguousarray(seen[y0:y1, x0:x1]), region.work_width, region.work_height
    )
    work_mask = imaging.resize_mask(edit[y0:y1, x0:x1], region.work_width, region.work_height)
    rows = make_rows(request, settings, work_rgb, work_mask)
    return PreparedEdit(request, model, rgba, transparent, edit, region.box, rows)


def make_rows(
    request: EditRequest, settings: Settings | None, image: np.ndarray, mask: np.ndarray
) -> list[Row]:
    """n rows with seeds seed, seed + 1, ... (a random seed when the request names none)."""
    seed = request.seed if request.seed is not None else random.randrange(2**31)
    return [
        Row(
            image=image,
            mask=mask,
            prompt=request.prompt,
            seed=seed + i,
            negative_prompt=request.negative_prompt,
            steps=settings.steps if settings else None,
            guidance_scale=settings.guidance_scale if settings else None,
            strength=settings.strength if settings else None,
            scheduler=settings.scheduler if settings else None,
            tiny_vae=settings.tiny_vae if settings else False,
            partial_images=request.partial_images if request.stream else 0,
        )
        for i in range(request.n)
    ]


def _check_extra_images(extra: list[Upload]) -> None:
    """Images after the first must be valid images, though single-image models ignore them."""
    for up in extra:
        try:
            info = imaging.probe(up.data)
        except imaging.ImageError as err:
            raise image_error(err, "image") from None
        if info.format not in IMAGE_FORMATS:
            raise ProtocolError(
                f"Invalid 'image': unsupported format '{info.format}'. Use PNG, JPEG or WebP.",
                "image",
                "unsupported_file_mimetype",
            )


def _decode_same_size(
    upload: Upload, formats: tuple[str, ...], width: int, height: int, code: str, limits: Limits
) -> tuple[np.ndarray, bool]:
    """Decode a mask or markup whose size, read from its header first, equals the image's."""
    param = upload.field
    try:
        info = imaging.probe(upload.data)
        too_large = info.width * info.height > limits.max_image_pixels
        if (info.width, info.height) == (width, height) or too_large:
            # (decode refuses a decompression bomb from its header, with image_too_large)
            return imaging.decode(
                upload.data, max_pixels=limits.max_image_pixels, allowed_formats=formats
            )
    except imaging.ImageError as err:
        raise image_error(err, param) from None
    raise ProtocolError(
        f"Invalid '{param}': it is {info.width}x{info.height} but the image is "
        f"{width}x{height}; the {param} must have the same width and height as the (first) "
        "image.",
        param,
        code,
    )


def markup_region(
    rgba: np.ndarray, markup: Upload, limits: Limits
) -> tuple[np.ndarray, np.ndarray]:
    """(edit float32 HxW {0,1}, guide uint8 HxWx3): the markup's strokes grown by a margin are
    the edit region; the guide is the image with the strokes drawn over it (what a model that
    reads the image sees). The canvas keeps the original pixels."""
    height, width = rgba.shape[:2]
    strokes, transparent = _decode_same_size(
        markup, MARKUP_FORMATS, width, height, "invalid_value", limits
    )
    if not transparent:
        raise ProtocolError(
            "Invalid 'markup': it has no transparent pixels. Draw the strokes on a transparent "
            "PNG of the image's size.",
            "markup",
        )
    try:
        edit = imaging.edit_mask_from_markup(strokes, imaging.MARKUP_MARGIN_PX)
    except imaging.ImageError as err:
        raise image_error(err, "markup") from None
    return edit, imaging.overlay_markup(np.ascontiguousarray(rgba[:, :, :3]), strokes)


def edit_region(rgba: np.ndarray, mask: Upload | None, limits: Limits) -> np.ndarray:
    """float32 HxW {0,1} edit region from the mask rules of the contract."""
    height, width = rgba.shape[:2]
    if mask is not None:
        mask_rgba, mask_transparent = _decode_same_size(
            mask, MASK_FORMATS, width, height, "invalid_mask", limits
        )
        edit = imaging.edit_mask_from_mask_image(mask_rgba, mask_transparent)
    else:
        edit = imaging.edit_mask_from_image_alpha(rgba)
        if edit is None:  # no mask and an opaque image: the whole image is editable
            edit = np.ones((height, width), np.float32)
    if not edit.any():
        raise ProtocolError(
            f"The edit region is empty: no pixel of the mask is transparent (alpha below "
            f"{imaging.ALPHA_EDIT_BELOW}) or, in a mask without transparency, white "
            f"(luminance above {imaging.LUMA_EDIT_ABOVE}). Make the area to edit transparent, "
            "or white in a black/white mask.",
            "mask",
            "invalid_mask",
        )
    return edit
