"""Fetching an image that a JSON edit names by ``http(s)`` URL (``{"image_url": "https://..."}``),
off unless the operator allows hosts (``--image-url-allow``).

What a fetch may do, all checked before any byte is sent:
- the URL: ``http``/``https``, no credentials, at most ``netpolicy.MAX_URL_CHARS``; its host
  on the allowlist (a name, ``*.suffix`` for subdomains, ``*`` for any host);
- the addresses: the host is resolved once, every address checked by ``server/netpolicy.py``
  (no private or special-purpose target, IPv6 translation prefixes unwrapped) unless
  ``--image-url-allow-private``, and the connection goes to a checked address (a resolver
  that answers only those), while the Host header and TLS SNI/verification name the host;
- the answer: ``200`` only (a redirect is a 400: never followed, so it cannot lead to an
  internal address), no ``Content-Encoding`` (nothing is inflated), at most the image cap
  (``--max-image-mb``: a larger ``Content-Length`` is refused before reading, and the body
  stops at the cap), each chunk reserved in the request's memory budget before it is kept,
  the whole fetch within ``--image-url-timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .. import netpolicy
from ..config import ImageURLConfig, Limits
from ..deadline import deadline
from ..errors import APIError, invalid
from ..service.admission import Reservation
from .forms import too_large_file

CHUNK = 64 * 1024


def bad_url(param: str, why: str) -> APIError:
    return invalid(
        f"The image URL of '{param}' cannot be used: {why}. Send the image as a data URL or a "
        "file_id instead.",
        param,
        "invalid_image_url",
    )


class _Pinned(AbstractResolver):
    """A resolver that answers the addresses already checked for the one host of a fetch,
    so that the connection goes where the check said (no second lookup)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # one session per fetch and no redirects: ``host`` is the URL's (as aiohttp spells it)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``host`` (as the URL writes it) is on the allowlist: an entry equal to it
    (names case-insensitive, a trailing dot ignored, addresses compared as addresses),
    ``*.suffix`` for names under ``suffix``, or ``*``."""
    name = host.lower().rstrip(".")
    address = _address(name)
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
        if address is not None and _address(entry) == address:
            return True
    return False


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


class ImageFetcher:
    """Fetches image URLs under ``config``'s rules, each at most the image cap of
    ``limits``."""

    def __init__(self, config: ImageURLConfig, limits: Limits) -> None:
        self.config, self.limits = config, limits
        self.max_bytes = limits.max_image_bytes

    async def fetch(self, url: str, param: str, reservation: Reservation) -> bytes:
        """The bytes at ``url`` (each chunk reserved in ``reservation`` before it is kept);
        a 400 naming ``param`` saying why it cannot be fetched."""
        try:
            scheme, host, port = netpolicy.split_url(url)
        except netpolicy.AddressRefused as exc:
            raise bad_url(param, str(exc)) from None
        if not host_allowed(host, self.config.image_url_allow):
            raise bad_url(
                param,
                f"this server fetches images only from the hosts its operator "
                f"allows (--image-url-allow), and {host[:80]!r} is not one of them",
            )
        try:
            async with deadline(self.config.image_url_timeout):
                return await self._fetch(url, host, port, param, reservation)
        except asyncio.TimeoutError:
            raise bad_url(
                param, f"it did not arrive within {self.config.image_url_timeout:g} seconds"
            ) from None
        except netpolicy.AddressRefused as exc:
            raise bad_url(param, str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise bad_url(param, f"the connection failed ({type(exc).__name__})") from None

    async def _fetch(self, url, host, port, param, reservation) -> bytes:
        addresses = await netpolicy.aresolve(host, port, self.config.image_url_allow_private)
        connector = aiohttp.TCPConnector(
            resolver=_Pinned(addresses), use_dns_cache=False, limit=1, force_close=True
        )
        async with aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False
        ) as session:
            async with session.get(
                url,
                allow_redirects=False,
                headers={"Accept": "image/*", "Accept-Encoding": "identity"},
            ) as response:
                self._check_answer(response, param)
                data = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK):
                    if len(data) + len(chunk) > self.max_bytes:
                        raise too_large_file(param, self.limits)
                    reservation.add(len(chunk))
                    data += chunk
                return bytes(data)

    def _check_answer(self, response: aiohttp.ClientResponse, param: str) -> None:
        if 300 <= response.status < 400:
            raise bad_url(
                param,
                f"it answered a redirect ({response.status}), which is not "
                "followed; name the final URL",
            )
        if response.status != 200:
            raise bad_url(param, f"it answered HTTP {response.status}")
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise bad_url(param, "it answered with a Content-Encoding; serve the image as is")
        if (response.content_length or 0) > self.max_bytes:
            raise too_large_file(param, self.limits)
