"""The edit service: one request from validated fields + uploaded bytes to encoded images.

    decode (image, mask) -> edit mask -> output size -> work region (crop rule) -> rows
      -> batcher/model -> paste back + composite (pixels outside the edit region unchanged)
      -> background/alpha -> encode -> b64_json or url

CPU-heavy steps run in the default thread pool, never on the event loop. Knows nothing of
aiohttp: routes hand it bytes and get back plain data.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import imaging
from .batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown
from .config import ServerConfig
from .errors import APIError, invalid, overloaded, shutting_down, timeout_error
from .models.base import InpaintModel, Row
from .models.registry import ModelNotFound, ModelRegistry
from .protocol import EditRequest, ImageData, InputTokensDetails, Usage
from .storage import FileStore

log = logging.getLogger("server.serving")

MASK_FORMATS = ("png", "jpeg", "webp", "bmp", "gif", "tiff")
#: OpenAI quality values -> the step preset a model is asked for.
QUALITY_PRESETS = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "auto": "medium",
    "standard": "medium",
    "hd": "high",
    "xhigh": "high",
    "max": "high",
}


@dataclass
class Upload:
    """One uploaded file part: the form field it came in and its bytes."""

    field: str
    data: bytes


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
    quality: str

    @property
    def size(self) -> str:
        return f"{self.canvas.shape[1]}x{self.canvas.shape[0]}"


@dataclass
class EditResult:
    created: int
    data: list[ImageData]
    background: str
    output_format: str
    quality: str
    size: str
    usage: Usage


def _image_error(err: imaging.ImageError, param: str) -> APIError:
    return invalid(f"Invalid '{param}': {err}", param, getattr(err, "code", "invalid_image_file"))


def output_size(
    request: EditRequest, model: InpaintModel, width: int, height: int
) -> tuple[int, int]:
    """(width, height) of the output. 'auto' keeps the input's size, scaled down (aspect kept,
    sides multiples of 8) only if it exceeds the model's max side."""
    lim = model.limits
    if request.size is not None:
        w, h = request.size
        if not (lim.min_side <= w <= lim.max_side and lim.min_side <= h <= lim.max_side):
            raise invalid(
                f"Invalid size '{w}x{h}': each side must be between {lim.min_side} and "
                f"{lim.max_side} for model '{model.name}'.",
                "size",
            )
        return w, h
    if max(width, height) <= lim.max_side and min(width, height) >= lim.min_side:
        return width, height
    scale = min(lim.max_side / max(width, height), 1.0)
    w = max(lim.min_side, int(width * scale) // lim.multiple * lim.multiple)
    h = max(lim.min_side, int(height * scale) // lim.multiple * lim.multiple)
    return w, h


class EditService:
    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        batcher: Batcher,
        store: FileStore,
        metrics=None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.store = store
        self.metrics = metrics

    def model(self, name: str | None) -> InpaintModel:
        try:
            return self.registry.get(name)
        except ModelNotFound:
            raise APIError(
                404,
                f"The model '{name}' does not exist. GET /v1/models lists the available models.",
                code="model_not_found",
                param="model",
            ) from None

    # ------------------------------------------------------------------ 1. prepare
    def prepare(
        self, request: EditRequest, images: list[Upload], mask: Upload | None
    ) -> PreparedEdit:
        """Blocking: decode, validate, crop. Raises APIError for anything the client must fix."""
        limits = self.config.limits
        model = self.model(request.model)
        if not images:
            raise invalid("Missing required parameter: 'image'. Upload the image to edit.", "image")
        if len(images) > limits.max_images:
            raise invalid(
                f"Too many images: {len(images)}; at most {limits.max_images} are accepted.",
                "image",
                "invalid_value",
            )
        if model.kind == "diffusion":
            self._check_extensions(request, model)
        first, *extra = images
        try:
            rgba, transparent = imaging.decode(first.data, max_pixels=limits.max_image_pixels)
        except imaging.ImageError as err:
            raise _image_error(err, "image") from None
        for up in extra:  # others must be valid images, but single-image models ignore them
            try:
                info = imaging.probe(up.data)
            except imaging.ImageError as err:
                raise _image_error(err, "image") from None
            if info.format not in ("png", "jpeg", "webp"):
                raise invalid(
                    f"Invalid 'image': unsupported format '{info.format}'. Use PNG, JPEG or WebP.",
                    "image",
                    "unsupported_file_mimetype",
                )
        if extra:
            log.info(
                "model %s edits the first of %d images; the others are ignored",
                model.name,
                len(images),
            )
        height, width = rgba.shape[:2]
        edit = self._edit_mask(rgba, mask, width, height)
        out_w, out_h = output_size(request, model, width, height)
        if request.n * out_w * out_h > limits.max_request_pixels:
            raise invalid(
                f"n x size is {request.n} x {out_w}x{out_h} pixels, over this server's limit of "
                f"{limits.max_request_pixels} pixels per request. Lower n or size.",
                "n",
                "image_too_large",
            )
        if (out_w, out_h) != (width, height):
            rgba = imaging.resize_image(rgba, out_w, out_h)
            edit = imaging.resize_mask(edit, out_w, out_h)
            if not edit.any():
                raise invalid(
                    "The edit region vanished when resized to the requested size; "
                    "use a larger mask region or a larger size.",
                    "mask",
                    "invalid_mask",
                )
        lim = model.limits
        region = imaging.plan_work_region(
            edit,
            native_side=lim.native_side,
            max_work_side=lim.max_work_side,
            multiple=lim.multiple,
        )
        x0, y0, x1, y1 = region.box
        work_rgb = imaging.resize_image(
            np.ascontiguousarray(rgba[y0:y1, x0:x1, :3]), region.work_width, region.work_height
        )
        work_mask = imaging.resize_mask(edit[y0:y1, x0:x1], region.work_width, region.work_height)
        quality = QUALITY_PRESETS.get(request.quality, "medium")
        steps = request.steps or model.default_steps(quality)
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        rows = [
            Row(
                image=work_rgb,
                mask=work_mask,
                prompt=request.prompt,
                seed=seed + i,
                negative_prompt=request.negative_prompt,
                steps=steps,
                guidance_scale=request.guidance_scale,
                strength=request.strength,
                scheduler=request.scheduler,
                partial_images=request.partial_images if request.stream else 0,
            )
            for i in range(request.n)
        ]
        self._validate_rows(model, rows)
        return PreparedEdit(request, model, rgba, transparent, edit, region.box, rows, quality)

    def _check_extensions(self, request: EditRequest, model: InpaintModel) -> None:
        names = model.describe().get("schedulers") or []
        if request.scheduler is not None and request.scheduler not in names:
            raise invalid(
                f"Unknown scheduler '{request.scheduler}'. Supported: {', '.join(names)}.",
                "scheduler",
            )

    @staticmethod
    def _validate_rows(model: InpaintModel, rows: list[Row]) -> None:
        """Ask the model to check extension values now, so a bad request gets its 400 here
        instead of failing a whole batch later. The param is the field the message starts with."""
        validate = getattr(model, "validate", None)
        if validate is None:
            return
        try:
            validate(rows[0])  # every row of a request shares the same settings
        except ValueError as err:
            message = str(err)
            first = message.split(" ", 1)[0]
            param = first if first in ("steps", "guidance_scale", "strength", "scheduler") else None
            raise invalid(f"{message}.", param) from None

    def _edit_mask(
        self, rgba: np.ndarray, mask: Upload | None, width: int, height: int
    ) -> np.ndarray:
        """float32 HxW {0,1} edit region from the mask rules of the contract."""
        if mask is not None:
            try:
                mask_rgba, mask_transparent = imaging.decode(
                    mask.data,
                    max_pixels=self.config.limits.max_image_pixels,
                    allowed_formats=MASK_FORMATS,
                )
            except imaging.ImageError as err:
                raise _image_error(err, "mask") from None
            mh, mw = mask_rgba.shape[:2]
            if (mw, mh) != (width, height):
                raise invalid(
                    f"Invalid 'mask': it is {mw}x{mh} but the image is {width}x{height}; "
                    "the mask must have the same width and height as the (first) image.",
                    "mask",
                    "invalid_mask",
                )
            edit = imaging.edit_mask_from_mask_image(mask_rgba, mask_transparent)
        else:
            edit = imaging.edit_mask_from_image_alpha(rgba)
            if edit is None:  # no mask and an opaque image: the whole image is editable
                edit = np.ones((height, width), np.float32)
        if not edit.any():
            raise invalid(
                "The edit region is empty: no pixel of the mask is fully transparent (alpha 0) "
                "or white. Make the area to edit transparent, or white in a black/white mask.",
                "mask",
                "invalid_mask",
            )
        return edit

    # ------------------------------------------------------------------ 2. run
    async def generate(
        self,
        prepared: PreparedEdit,
        cancelled: Callable[[], bool] | None = None,
        poll_s: float = 0.25,
    ) -> list[np.ndarray]:
        """Queue the rows, wait for the images (uint8 HxWx3 at work size)."""
        worker = self.batcher.worker(prepared.model.name)
        try:
            job = worker.submit(prepared.rows, timeout_s=self.config.request_timeout_s)
        except QueueFull as full:
            raise overloaded(
                full.retry_after_s,
                "The server is overloaded: its queue is full. "
                "Retry after the number of seconds in the Retry-After header.",
            ) from None
        except ShuttingDown:
            raise shutting_down() from None
        try:
            while True:
                left = job.deadline - time.monotonic()
                done, _ = await asyncio.wait({job.future}, timeout=max(0.0, min(poll_s, left)))
                if done:
                    return job.future.result()
                if cancelled is not None and cancelled():
                    job.cancelled.set()
                    raise asyncio.CancelledError()
                if time.monotonic() >= job.deadline:
                    # The worker only checks deadlines between model calls; a request whose call
                    # is still running (or queued behind one) must get its 504 now, not later.
                    job.cancelled.set()
                    raise DeadlineExceeded()
        except DeadlineExceeded:
            raise timeout_error(
                f"The request did not finish within the server's {self.config.request_timeout_s:g} s "
                "deadline. Retry with fewer images (n), a smaller size or fewer steps."
            ) from None
        except ShuttingDown:
            raise shutting_down() from None
        except asyncio.CancelledError:
            job.cancelled.set()  # the client went away: its rows leave at the next step
            raise

    # ------------------------------------------------------------------ 3. finish
    def compose(self, prepared: PreparedEdit, generated: np.ndarray) -> np.ndarray:
        """Blocking: paste a work-size image back; uint8 HxWx3 (or HxWx4) at output size."""
        x0, y0, x1, y1 = prepared.box
        canvas_rgb = np.ascontiguousarray(prepared.canvas[:, :, :3])
        full = canvas_rgb.copy()
        full[y0:y1, x0:x1] = imaging.resize_image(generated, x1 - x0, y1 - y0)
        out = imaging.composite(canvas_rgb, full, prepared.edit)
        alpha = prepared.canvas[:, :, 3] if prepared.had_transparency else None
        return imaging.apply_background(
            out, alpha, prepared.edit, prepared.request.background, prepared.request.output_format
        )

    def encode(self, prepared: PreparedEdit, image: np.ndarray) -> bytes:
        req = prepared.request
        return imaging.encode(image, req.output_format, compression=req.output_compression)

    def render(self, prepared: PreparedEdit, generated: np.ndarray) -> tuple[bytes, str]:
        """Blocking: compose + encode one work-size image -> (file bytes, background)."""
        composed = self.compose(prepared, generated)
        transparent = composed.ndim == 3 and composed.shape[2] == 4
        return self.encode(prepared, composed), "transparent" if transparent else "opaque"

    def to_data(self, prepared: PreparedEdit, encoded: bytes, base_url: str) -> ImageData:
        if prepared.request.response_format == "url":
            name = self.store.put(encoded, prepared.request.output_format)
            return ImageData(url=f"{base_url}/v1/images/files/{name}")
        return ImageData(b64_json=base64.b64encode(encoded).decode("ascii"))

    def usage(self, prepared: PreparedEdit) -> Usage:
        req, model = prepared.request, prepared.model
        text = model.count_tokens(req.prompt)
        if req.negative_prompt:
            text += model.count_tokens(req.negative_prompt)
        work = prepared.rows[0].image.shape
        cells = (work[0] // 8) * (work[1] // 8)  # one token per 8x8 pixel cell (a latent pixel)
        out = cells * req.n
        return Usage(
            input_tokens=text + cells,
            output_tokens=out,
            total_tokens=text + cells + out,
            input_tokens_details=InputTokensDetails(text_tokens=text, image_tokens=cells),
        )

    async def finish(
        self, prepared: PreparedEdit, images: list[np.ndarray], base_url: str
    ) -> EditResult:
        loop = asyncio.get_running_loop()

        def work() -> tuple[list[ImageData], str]:
            data, background = [], "opaque"
            for img in images:
                encoded, background = self.render(prepared, img)
                data.append(self.to_data(prepared, encoded, base_url))
            return data, background

        data, background = await loop.run_in_executor(None, work)
        return EditResult(
            created=int(time.time()),
            data=data,
            background=background,
            output_format=prepared.request.output_format,
            quality=prepared.quality,
            size=prepared.size,
            usage=self.usage(prepared),
        )

    # ------------------------------------------------------------------ streaming
    async def stream(self, prepared: PreparedEdit, cancelled: Callable[[], bool] | None = None):
        """Yield OpenAI image-edit stream events (dicts): ``image_edit.partial_image`` for each
        preview the model produces, then one ``image_edit.completed`` per image. Images are
        always b64_json in a stream, as OpenAI does."""
        loop = asyncio.get_running_loop()
        previews: asyncio.Queue = asyncio.Queue()
        for row in prepared.rows:

            def on_preview(index: int, image: np.ndarray, _row=row) -> None:
                loop.call_soon_threadsafe(previews.put_nowait, (index, image))

            row.on_preview = on_preview
        req = prepared.request
        common = {
            "background": "opaque",
            "output_format": req.output_format,
            "quality": prepared.quality,
            "size": prepared.size,
        }
        task = asyncio.ensure_future(self.generate(prepared, cancelled))
        try:
            while not task.done() or not previews.empty():
                getter = asyncio.ensure_future(previews.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    continue
                index, image = getter.result()
                encoded, _ = await loop.run_in_executor(None, self.render, prepared, image)
                yield {
                    "type": "image_edit.partial_image",
                    "partial_image_index": index,
                    "b64_json": base64.b64encode(encoded).decode("ascii"),
                    "created_at": int(time.time()),
                    **common,
                }
            images = task.result()
        finally:
            if not task.done():
                task.cancel()
        usage = self.usage(prepared).model_dump()
        for img in images:
            encoded, background = await loop.run_in_executor(None, self.render, prepared, img)
            yield {
                "type": "image_edit.completed",
                "b64_json": base64.b64encode(encoded).decode("ascii"),
                "created_at": int(time.time()),
                **common,
                "background": background,
                "usage": usage,
            }
