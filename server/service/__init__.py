"""The edit service (pure: imports no aiohttp). A request's way through it, by file:

- ``validate.py``: the request against the model's declared capabilities and the server's
  limits, once, before anything is queued;
- ``prepare.py``: decode the image and mask, the edit region, output size, crop rule -> rows;
- ``edit.py``: ``EditService``: queue the rows on the batcher, wait, build the protocol objects
  (``ImagesResponse`` or stream events);
- ``encode.py``: paste back, composite, background, encode; usage;
- ``progress.py``: steps done / planned over a request's rows (async jobs, streamed progress).
"""

from .edit import EditService
from .prepare import PreparedEdit, Upload, Uploads

__all__ = ["EditService", "PreparedEdit", "Upload", "Uploads"]
