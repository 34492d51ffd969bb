"""The images a JSON edit names instead of carrying (``forms.Reference``): ``{"file_id":
"file-..."}`` read from ``/v1/files``, ``{"image_url": "https://..."}`` fetched by the image URL
fetcher (``fetch.py``, off unless the operator allows hosts). Both give bytes under the
per-image cap, reserved in the request's memory budget before they are held, so that a body
of references cannot make the server hold more than its budget allows.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Limits
from ..errors import invalid
from ..service import Upload
from ..service.admission import Reservation
from .forms import EditBody, Reference


class FileReader(Protocol):
    async def read_for_reference(
        self, owner: str, file_id: str, param: str, max_bytes: int
    ) -> bytes: ...


class URLFetcher(Protocol):
    async def fetch(self, url: str, param: str, reservation: Reservation) -> bytes: ...


def has_references(body: EditBody) -> bool:
    return any(isinstance(x, Reference) for x in (*body.images, body.mask, body.markup))


async def resolve_references(
    body: EditBody,
    *,
    owner: str,
    files: FileReader | None,
    fetcher: URLFetcher | None,
    limits: Limits,
    reservation: Reservation,
) -> None:
    """Replace each ``Reference`` of ``body`` (images in order, mask, markup) by the
    ``Upload`` of its bytes, one at a time; a 400 naming the field when one cannot be read.
    ``files`` reads ``owner``'s files (None: this server has no files API); ``fetcher`` is
    None when the operator has not enabled image URLs."""
    args = (owner, files, fetcher, limits, reservation)
    body.images = [await _resolve(item, *args) for item in body.images]
    body.mask = await _resolve(body.mask, *args)
    body.markup = await _resolve(body.markup, *args)


async def _resolve(item, owner, files, fetcher, limits: Limits, reservation: Reservation):
    if not isinstance(item, Reference):
        return item
    if item.kind == "file_id":
        if files is None:
            raise invalid(
                f"'{item.param}' names a file, but this server has no files API (/v1/files); "
                "send the image as a data URL instead.",
                item.param,
                "invalid_value",
            )
        cap = limits.max_image_bytes
        reservation.add(cap)  # the file's size is known only once read: its cap first
        try:
            data = await files.read_for_reference(owner, item.value, item.param, cap)
        except BaseException:
            reservation.give_back(cap)
            raise
        reservation.give_back(cap - len(data))
        return Upload(item.param, data)
    if fetcher is None:
        raise invalid(
            f"'{item.param}' names an image URL, but this server does not fetch image URLs "
            "(its operator can allow hosts with --image-url-allow); send the image as a data "
            "URL or a file_id instead.",
            item.param,
            "invalid_value",
        )
    return Upload(item.param, await fetcher.fetch(item.value, item.param, reservation))
