"""Bearer-key authentication.

Keys are compared in constant time (``hmac.compare_digest`` over their SHA-256 digests, so the
comparison time depends on neither the key's content nor its length). Keys never appear in logs
or error bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from .errors import APIError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyStore:
    def __init__(self, keys: tuple[str, ...] | list[str]) -> None:
        self._digests = [_digest(k) for k in keys if k]

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        d = _digest(presented)
        ok = False
        for known in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(d, known)
        return ok

    def key_id(self, presented: str) -> str:
        """A short non-secret label for a key (for rate limits and logs)."""
        return _digest(presented).hex()[:12]


def generate_key() -> str:
    return "sk-local-" + secrets.token_urlsafe(24)


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    keys = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value; None without a header,
    "" for another scheme."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def authenticate(header: str | None, keys: KeyStore) -> str:
    """The key id of the caller presenting ``header`` (the Authorization value), or a 401."""
    token = bearer_token(header)
    if token is None:
        raise APIError(
            401,
            "You didn't provide an API key. Send it in an Authorization header: "
            "'Authorization: Bearer YOUR_KEY'.",
        )
    if not token or not keys.check(token):
        raise APIError(
            401,
            "Incorrect API key provided. Use a key configured on this server "
            "(--api-key, INPAINT_API_KEYS or --api-keys-file).",
            code="invalid_api_key",
        )
    return keys.key_id(token)
