"""The edit service: one request from a parsed ``EditRequest`` + uploaded bytes to protocol
objects: an ``ImagesResponse`` (JSON) or a sequence of stream events.

    prepare (decode, validate, crop: prepare.py) -> batcher/model (rows)
      -> render each image (encode.py) -> b64_json or url -> ImagesResponse / events

CPU-heavy steps run in the service's bounded executor, never on the event loop. Imports no
aiohttp. Latency is recorded for every edit, JSON and stream alike. Each request holds a memory
``Reservation`` (admission.py) for its decode/compose/encode work; ``abort_all`` (shutdown, at
the end of the grace period) makes every edit still waiting for its model answer 503.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

import numpy as np

from ..batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown
from ..config import ServerConfig
from ..errors import (
    APIError,
    overloaded,
    shutting_down,
    timeout_error,
    too_large_for_server,
)
from ..metrics import Metrics
from ..models.base import InpaintModel
from ..models.registry import ModelNotFound, ModelRegistry
from ..protocol import (
    CompletedEvent,
    EditRequest,
    ImageData,
    ImagesResponse,
    PartialImageEvent,
    ProgressEvent,
    StreamEvent,
)
from ..storage import Store
from . import encode
from .admission import Reservation
from .prepare import PreparedEdit, Uploads, prepare_edit
from .progress import Progress

log = logging.getLogger("server.service")

#: a client polled for hang-ups this often while its rows run
CANCEL_POLL_S = 0.25


class EditService:
    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        batcher: Batcher,
        store: Store,
        metrics: Metrics | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.batcher = batcher
        self.store = store
        self.metrics = metrics
        self.executor = executor  # None = the loop's default executor (tests)
        self.aborting = False

    def abort_all(self) -> None:
        """Shutdown past its grace: edits still waiting for the model get 503 now (their rows
        are dropped at the next step); new ones are refused by the batcher."""
        self.aborting = True

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

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
        self, request: EditRequest, uploads: Uploads, reservation: Reservation | None = None
    ) -> PreparedEdit:
        """Blocking: model lookup, validation, memory reservation, decode, crop."""
        model = self.model(request.model)
        prepared = prepare_edit(request, model, uploads, self.config.limits, reservation)
        if request.end_user:  # accounting: the end-user id goes to the log (escaped there)
            log.info("edit model=%s n=%d user=%s", model.name, request.n, request.end_user)
        return prepared

    # ------------------------------------------------------------------ JSON
    async def edit(
        self,
        request: EditRequest,
        uploads: Uploads,
        base_url: str,
        cancelled: Callable[[], bool] | None = None,
        reservation: Reservation | None = None,
        on_prepared: Callable[[PreparedEdit], None] | None = None,
    ) -> ImagesResponse:
        """The JSON path. ``on_prepared`` sees the rows before they are queued (async jobs hook
        their progress on them)."""
        started = time.perf_counter()
        prepared = await self._blocking(self.prepare, request, uploads, reservation)
        if on_prepared is not None:
            on_prepared(prepared)
        generated = await self.generate(prepared, cancelled)

        def finish() -> tuple[list[ImageData], str]:
            data, background = [], "opaque"
            for img in generated:
                encoded, background = encode.render(prepared, img)
                data.append(self._image_data(prepared, encoded, base_url))
            return data, background

        data, background = await self._blocking(finish)
        self._observe(prepared, started)
        return ImagesResponse(
            created=int(time.time()),
            data=data,
            background=background,
            output_format=request.output_format,
            quality=prepared.quality,
            size=prepared.size,
            usage=encode.usage(prepared),
            safety_identifier=request.end_user,
        )

    def _image_data(self, prepared: PreparedEdit, encoded: bytes, base_url: str) -> ImageData:
        req = prepared.request
        if req.response_format == "url":
            name = self.store.put(encoded, req.output_format)
            return ImageData(url=self.store.link(name, base_url))
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
        if self.aborting:
            raise shutting_down()
        cost = row_cost(prepared)
        if cost * len(prepared.rows) > worker.max_queue:  # would not fit an empty queue either
            raise too_large_for_server(
                f"This request needs {cost * len(prepared.rows)} queue slots (n x size in units "
                f"of the model's native square), more than the server's queue holds "
                f"({worker.max_queue}). Lower n or size."
            )
        try:
            job = worker.submit(prepared.rows, timeout_s=timeout_s, row_cost=cost)
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
                if self.aborting:
                    job.cancelled.set()
                    raise ShuttingDown()
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
        uploads: Uploads,
        cancelled: Callable[[], bool] | None = None,
        reservation: Reservation | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """``PartialImageEvent`` for each preview the model produces, then one
        ``CompletedEvent`` per image; each event names its image (``image_index``) and carries
        that image's background; usage is split so the completed events add up to the request's.
        Images are always base64 in a stream, as OpenAI's are. Errors of ``prepare`` raise
        before the first event (the route answers with a status); later ones between events."""
        prepared = await self.start(request, uploads, reservation)
        async for event in self.events(prepared, cancelled):
            yield event

    async def start(
        self, request: EditRequest, uploads: Uploads, reservation: Reservation | None = None
    ) -> PreparedEdit:
        """``prepare`` off the loop: everything a stream needs before its first byte."""
        prepared = await self._blocking(self.prepare, request, uploads, reservation)
        prepared.started = time.perf_counter()
        return prepared

    async def events(
        self, prepared: PreparedEdit, cancelled: Callable[[], bool] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """The events of a started stream (see ``stream``); with ``stream_progress``, a
        ``ProgressEvent`` first, then one each time the steps done change (coalesced: the
        client gets the latest count, not one event per row per step), and a last one at 100%."""
        request = prepared.request
        loop = asyncio.get_running_loop()
        #: (image_index, preview index, image) tuples, or ``Progress`` markers
        previews: asyncio.Queue = asyncio.Queue()
        for image_index, row in enumerate(prepared.rows):

            def on_preview(index: int, image: np.ndarray, _image_index=image_index) -> None:
                loop.call_soon_threadsafe(previews.put_nowait, (_image_index, index, image))

            row.on_preview = on_preview
        progress: Progress | None = None
        sent = (-1, -1)
        if request.stream_progress:
            progress = Progress(lambda: loop.call_soon_threadsafe(previews.put_nowait, progress))
            progress.attach(prepared.rows)
            sent = progress.snapshot()
            yield _progress_event(sent)
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
                item = getter.result()
                if isinstance(item, Progress):
                    if item.snapshot() != sent:
                        sent = item.snapshot()
                        yield _progress_event(sent)
                    continue
                image_index, index, image = item
                encoded, background = await self._blocking(encode.render, prepared, image)
                yield PartialImageEvent(
                    partial_image_index=index,
                    image_index=image_index,
                    b64_json=base64.b64encode(encoded).decode("ascii"),
                    created_at=int(time.time()),
                    background=background,
                    **common,
                )
            generated = task.result()
        finally:
            if not task.done():
                task.cancel()
        if progress is not None and (final := progress.complete()) != sent:
            yield _progress_event(final)
        usage = encode.usage(prepared)
        for image_index, img in enumerate(generated):
            encoded, background = await self._blocking(encode.render, prepared, img)
            yield CompletedEvent(
                image_index=image_index,
                b64_json=base64.b64encode(encoded).decode("ascii"),
                created_at=int(time.time()),
                background=background,
                usage=encode.image_usage(usage, len(generated), image_index),
                safety_identifier=request.end_user,
                **common,
            )
        self._observe(prepared, prepared.started)


def _progress_event(counts: tuple[int, int]) -> ProgressEvent:
    """``ProgressEvent`` of ``(steps done, steps planned)``, stamped now."""
    return ProgressEvent(steps_done=counts[0], steps_total=counts[1], created_at=int(time.time()))


def row_cost(prepared: PreparedEdit) -> int:
    """A row's queue cost: its work pixels in units of the model's native square (at least 1)."""
    h, w = prepared.rows[0].image.shape[:2]
    native = prepared.model.capabilities.limits.native_side
    return max(1, math.ceil(w * h / (native * native)))
