"""Which network addresses the server may connect to on a client's behalf (webhooks, image
URLs): the one SSRF policy, shared by every outgoing connection a request can cause.

A target is refused unless every address its host resolves to is public: not in an IANA
special-purpose range (``SPECIAL_V4`` / ``SPECIAL_V6``, written out here rather than trusting
``ipaddress.is_global``, which lets 192.0.0.8 or 224.0.0.1 through on Python 3.11) and, for an
IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
Teredo), not carrying a refused IPv4 address either: ``[64:ff9b::a9fe:a9fe]`` reaches the
metadata service 169.254.169.254 through a NAT64 gateway. A host written as a number in any
spelling ``inet_aton`` accepts (``2852039166``, ``0251.0376.0251.0376``, ``0xa9fea9fe``,
``0x7f.1``) is read as that address, never looked up in DNS.

Callers resolve once, check every address, then connect to a checked address (never to the
name again, so that a DNS answer that changes in between cannot redirect the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: the longest URL the server connects to
MAX_URL_CHARS = 2048

#: IPv4 ranges never connected to (RFC 6890 and the IANA special-purpose registry, multicast,
#: the reserved 240/4 and broadcast): their hosts are internal, shared or not hosts at all
SPECIAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata 169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.8, DS-Lite, NAT64 discovery...)
        "192.0.2.0/24",  # documentation
        "192.31.196.0/24",  # AS112
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)
#: IPv6 ranges never connected to (those that embed an IPv4 address are unwrapped first, and
#: the embedded address is checked too)
SPECIAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback, IPv4-compatible (deprecated)
        "64:ff9b:1::/48",  # local-use NAT64: translates to the operator's own networks
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 included
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

#: one part of a numeric IPv4 spelling as inet_aton reads it: decimal, octal (leading 0), hex
_NUMERIC_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")


class AddressRefused(ValueError):
    """A target the policy refuses; the message says which address and why."""


def split_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an absolute ``http``/``https`` URL without credentials,
    spaces or control characters, at most ``MAX_URL_CHARS`` long; ``AddressRefused`` saying
    what is wrong otherwise. Its addresses are checked apart (``resolve``)."""
    if len(url) > MAX_URL_CHARS:
        raise AddressRefused(f"longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AddressRefused("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("use an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("credentials in the URL are not supported")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise AddressRefused("the URL contains spaces or control characters")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries to an IPv4 host: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::/96``, and the
    last 32 bits of ``64:ff9b:1::/48``), 6to4 (``2002::/16``), Teredo (server and client)."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in IPV4_COMPATIBLE or ip in NAT64 or ip in LOCAL_NAT64:
        found.append(low32)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def _v4_refused(ip: ipaddress.IPv4Address) -> bool:
    return not ip.is_global or any(ip in net for net in SPECIAL_V4)


def refusal(address: str | IPAddress) -> str | None:
    """Why ``address`` may not be connected to (``None``: it is public). A zone index
    (``fe80::1%eth0``) is ignored."""
    ip = address if not isinstance(address, str) else ipaddress.ip_address(address.split("%")[0])
    if ip.version == 4:
        return "a special-purpose (non-public) address" if _v4_refused(ip) else None
    for inner in embedded_ipv4(ip):
        if _v4_refused(inner):
            return f"an IPv6 address carrying the non-public IPv4 address {inner}"
    if ip.ipv4_mapped is not None:  # the connection goes to the IPv4 address: it decides
        return None
    if not ip.is_global or any(ip in net for net in SPECIAL_V6):
        return "a special-purpose (non-public) address"
    return None


def literal(host: str) -> IPAddress | None:
    """``host`` as an address when it is written as one: IPv6 (brackets optional), dotted
    IPv4, or any numeric spelling ``inet_aton`` accepts (``2852039166``, ``0x7f.1``, octal
    parts); ``None`` for a name. ``AddressRefused`` for a number no address reads as, rather
    than looking it up as a name."""
    host = host.strip("[]").split("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    parts = host.removesuffix(".").split(".")
    if not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host.removesuffix(".")))
    except OSError:
        raise AddressRefused(
            f"the host {host[:80]!r} is a number but not an IPv4 address"
        ) from None


def check_addresses(host: str, addresses: Iterable[str], allow_private: bool) -> list[str]:
    """The distinct ``addresses`` of ``host``, in order; ``AddressRefused`` when there are
    none or (unless ``allow_private``) when any one is refused: one bad answer among good
    ones could be the one connected to."""
    found = list(dict.fromkeys(a.split("%")[0] for a in addresses))
    if not found:
        raise AddressRefused(f"the host {host[:80]!r} has no address")
    if not allow_private:
        for address in found:
            why = refusal(address)
            if why is not None:
                raise AddressRefused(
                    f"the host {host[:80]!r} resolves to {address}, {why}; this server "
                    "connects only to public addresses"
                )
    return found


def addresses_of(host: str, infos: list, allow_private: bool) -> list[str]:
    """``check_addresses`` for the answer ``getaddrinfo(host, ...)`` gave (``infos``); a
    literal ``host`` is its own address whatever ``infos`` says."""
    ip = literal(host)
    if ip is not None:
        return check_addresses(host, [str(ip)], allow_private)
    return check_addresses(host, (info[4][0] for info in infos), allow_private)


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The checked addresses of ``host`` (blocking: ``getaddrinfo`` unless ``host`` is a
    literal address)."""
    if literal(host) is not None:
        return addresses_of(host, [], allow_private)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise AddressRefused(f"the host {host[:80]!r} does not resolve") from None
    return addresses_of(host, infos, allow_private)


async def aresolve(host: str, port: int, allow_private: bool) -> list[str]:
    """``resolve`` with the event loop's ``getaddrinfo`` (run in its default executor)."""
    if literal(host) is not None:
        return addresses_of(host, [], allow_private)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise AddressRefused(f"the host {host[:80]!r} does not resolve") from None
    return addresses_of(host, infos, allow_private)
