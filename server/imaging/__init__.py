"""Pixels at the request boundary: decode uploads, derive edit masks, plan the crop, composite, encode.

Data conventions (docs/CONVENTIONS.md): images are uint8 HxWx3 RGB or HxWx4 RGBA in [0, 255];
masks are float32 HxW in [0, 1] (the ones made here are exactly {0, 1}), 1 = edit. Everything
here is numpy/OpenCV/Pillow (no torch).

Modules, in the order a request uses them (each imports only those above it):
- ``errors``: ImageError, the client's unusable image with its OpenAI error code.
- ``structure``: byte-level container checks before any pixel buffer exists (PNG chunk walk and
  bounded inflate, JPEG marker walk and scan count, WebP RIFF, BMP rows, TIFF strips).
- ``decoding``: upload bytes -> uint8 HxWx4 RGBA (sniff, open, EXIF orientation, probe, decode).
- ``masks``: the edit-region rules (mask image, image alpha, markup) -> float32 HxW masks.
- ``geometry``: resize images and masks, the size rule (``cover_box``); WorkRegion and plan_work_region (the crop rule).
- ``compose``: composite the result into the original, apply the background, encode.

Callers use the names re-exported here (``imaging.decode``, ``imaging.composite``, ...); private
helpers are imported from their module. The module is ``decoding``, not ``decode``, so that
``server.imaging.decode`` always names the function (``import ... as`` and mock paths included).
"""

from __future__ import annotations

from .compose import apply_background, composite, encode
from .decoding import ImageInfo, decode, probe
from .errors import ImageError
from .geometry import WorkRegion, cover_box, plan_work_region, resize_image, resize_mask
from .masks import (
    ALPHA_EDIT_BELOW,
    LUMA_EDIT_ABOVE,
    MARKUP_MARGIN_PX,
    edit_mask_from_image_alpha,
    edit_mask_from_markup,
    edit_mask_from_mask_image,
    overlay_markup,
)
from .structure import MAX_CONTAINER_ITEMS, MAX_JPEG_SCANS

__all__ = [
    "ALPHA_EDIT_BELOW",
    "LUMA_EDIT_ABOVE",
    "MARKUP_MARGIN_PX",
    "MAX_CONTAINER_ITEMS",
    "MAX_JPEG_SCANS",
    "ImageError",
    "ImageInfo",
    "WorkRegion",
    "apply_background",
    "composite",
    "cover_box",
    "decode",
    "edit_mask_from_image_alpha",
    "edit_mask_from_markup",
    "edit_mask_from_mask_image",
    "encode",
    "overlay_markup",
    "plan_work_region",
    "probe",
    "resize_image",
    "resize_mask",
]
