"""The one exception of server/imaging: an unusable client image, with its OpenAI error code."""

from __future__ import annotations


class ImageError(ValueError):
    """The client's image is unusable; ``code`` is the OpenAI error code, the message says the fix."""

    def __init__(self, message: str, code: str = "invalid_image_file"):
        super().__init__(message)
        self.code = code
