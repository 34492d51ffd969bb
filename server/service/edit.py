"""The edit service: one request from a parsed ``EditRequest`` + uploaded bytes to protocol
objects: an ``ImagesResponse`` (JSON) or a sequence of stream events.

    prepare (decode, validate, crop: prepare.py) -> batcher/model (rows)
      -> render each image (encode.py) -> b64_json or url -> ImagesResponse / events

CPU-heavy steps run in the default thread pool, never on the event loop. Imports no aiohttp.
Latency is recorded for every edit, JSON and stream alike.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from ..batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown
from ..config import ServerConfig
from ..errors import APIError, overloaded, shutting_down, timeout_error
from ..metrics import Metrics
from ..models.base import InpaintModel
from ..models.registry import ModelNotFound, ModelRegistry
from ..protocol import (
    CompletedEvent,
    EditRequest,
    ImageData,
    ImagesResponse,
    PartialImageEvent,
    StreamEvent,
)
from ..storage import FileStore
from . import encode
from .prepare import PreparedEdit, Upload, prepare_edit

log = logging.getLogger("server.service")

#: a client polled for hang-ups this often while its rows run
CANCEL_POLL_S = 0.25


class EditService:
    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        batcher: Batcher,
        store: FileStore,
        metrics: Metrics | None = None,
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
                f"The model '{(name or '')[:64]}' does not exist. GET /v1/models lists the "
                "available models.",
                code="model_not_found",
                param="model",
            ) from None

    def prepare(
        self, request: EditRequest, images: list[Upload], mask: Upload | None
    ) -> PreparedEdit:
        """Blocking: model lookup, validation, decode, crop (``prepare.prepare_edit``)."""
        model = self.model(request.model)
        prepared = prepare_edit(request, model, images, mask, self.config.limits)
        if request.user:  # accounting: the caller's end-user id goes to the log, nowhere else
            log.info("edit model=%s n=%d user=%s", model.name, request.n, request.user[:128])
        return prepared

    # ------------------------------------------------------------------ JSON
    async def edit(
        self,
        request: EditRequest,
        images: list[Upload],
        mask: Upload | None,
        base_url: str,
        cancelled: Callable[[], bool] | None = None,
    ) -> ImagesResponse:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(None, self.prepare, request, images, mask)
        generated = await self.generate(prepared, cancelled)

        def finish() -> tuple[list[ImageData], str]:
            data, background = [], "opaque"
            for img in generated:
                encoded, background = encode.render(prepared, img)
                data.append(self._image_data(prepared, encoded, base_url))
            return data, background

        data, background = await loop.run_in_executor(None, finish)
        self._observe(prepared, started)
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            background=background,
            output_format=request.output_format,
            quality=prepared.quality,
            size=prepared.size,
            usage=encode.usage(prepared),
        )

    def _image_data(self, prepared: PreparedEdit, encoded: bytes, base_url: str) -> ImageData:
        req = prepared.request
        if req.response_format == "url":
            name = self.store.put(encoded, req.output_format)
            return ImageData(url=f"{base_url}/v1/images/files/{name}")
        return ImageData(b64_json=base64.b64encode(encoded).decode("ascii"))

    def _observe(self, prepared: PreparedEdit, started: float) -> None:
        if self.metrics is not None:
            self.metrics.latency.labels(prepared.model.name).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ run
    async def generate(
        self, prepared: PreparedEdit, cancelled: Callable[[], bool] | None = None
    ) -> list[np.ndarray]:
        """Queue the rows, wait for the images (uint8 HxWx3 at work size)."""
        worker = self.batcher.worker(prepared.model.name)
        timeout_s = self.config.batching.request_timeout
        try:
            job = worker.submit(prepared.rows, timeout_s=timeout_s)
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
                done, _ = await asyncio.wait(
                    {job.future}, timeout=max(0.0, min(CANCEL_POLL_S, left))
                )
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
                f"The request did not finish within the server's {timeout_s:g} s deadline. "
                "Retry with fewer images (n), a smaller size or fewer steps."
            ) from None
        except ShuttingDown:
            raise shutting_down() from None
        except asyncio.CancelledError:
            job.cancelled.set()  # the client went away: its rows leave at the next step
            raise

    # ------------------------------------------------------------------ stream
    async def stream(
        self,
        request: EditRequest,
        images: list[Upload],
        mask: Upload | None,
        cancelled: Callable[[], bool] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """``PartialImageEvent`` for each preview the model produces, then one
        ``CompletedEvent`` per image. Images are always base64 in a stream, as OpenAI's are.
        Errors before the first event raise (the route answers with a status); later ones
        raise between events."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(None, self.prepare, request, images, mask)
        previews: asyncio.Queue = asyncio.Queue()
        for row in prepared.rows:

            def on_preview(index: int, image: np.ndarray) -> None:
                loop.call_soon_threadsafe(previews.put_nowait, (index, image))

            row.on_preview = on_preview
        common = {
            "output_format": request.output_format,
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
                encoded, _ = await loop.run_in_executor(None, encode.render, prepared, image)
                yield PartialImageEvent(
                    partial_image_index=index,
                    b64_json=base64.b64encode(encoded).decode("ascii"),
                    created_at=int(time.time()),
                    background="opaque",
                    **common,
                )
            generated = task.result()
        finally:
            if not task.done():
                task.cancel()
        usage = encode.usage(prepared)
        for img in generated:
            encoded, background = await loop.run_in_executor(None, encode.render, prepared, img)
            yield CompletedEvent(
                b64_json=base64.b64encode(encoded).decode("ascii"),
                created_at=int(time.time()),
                background=background,
                usage=usage,
                **common,
            )
        self._observe(prepared, started)
