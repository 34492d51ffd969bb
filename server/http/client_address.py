"""The client's address: the peer, or, when the peer is one of the operator's trusted proxies
(``--trusted-proxy``), the address that proxy reports in ``--forwarded-header``.

Behind a reverse proxy every connection comes from the proxy, so keying anything per peer
(the failed-auth throttle) would key it per proxy: one client's failures would throttle all.
The forwarded header is read only from a trusted peer, right to left: each proxy appends the
address it received the request from, so the rightmost entries are written by proxies we
trust and the first untrusted address from the right is the client as the outermost trusted
proxy saw it. What a client writes into the header itself sits to the left of that and is
never read. ``client_address`` is the one place that decides; the auth throttle and the
access log read its answer (``CLIENT_ADDRESS``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: the headers a trusted proxy may use (``--forwarded-header``)
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
#: longest reported value kept when it is not an address (RFC 7239 obfuscated ids, "unknown")
MAX_TOKEN_CHARS = 64

#: request key: the client's address, as ``client_address`` found it (set by the middlewares)
CLIENT_ADDRESS = web.RequestKey("client_address", str) if hasattr(web, "RequestKey") else "client"


def trusted_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``--trusted-proxy`` values (``10.0.0.0/8``, ``127.0.0.1``, ``fd00::/8``) as networks;
    a ValueError names a value that is not an address or CIDR."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--trusted-proxy {value!r}: give an IP address or a CIDR such as 10.0.0.0/8"
            ) from None
    return tuple(out)


def check_forwarded_header(name: str) -> str:
    """``--forwarded-header`` lower-cased, or a ValueError naming the accepted ones."""
    if name.lower() not in FORWARDED_HEADERS:
        raise ValueError(f"--forwarded-header {name!r}: use one of {', '.join(FORWARDED_HEADERS)}")
    return name.lower()


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a forwarded entry or a peer: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``[2001:db8::1]:443``, ``"[2001:db8::1]"``, ``::ffff:1.2.3.4`` (-> 1.2.3.4); None when it
    is none ("unknown", an obfuscated id, garbage)."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def forwarded_for(values: Sequence[str], header: str) -> list[str]:
    """The reported hops of every ``header`` line, in order (leftmost = farthest)."""
    hops = []
    for line in values:
        for element in line.split(","):
            if header == "x-forwarded-for":
                hops.append(element.strip())
                continue
            for pair in element.split(";"):  # RFC 7239: for=...;proto=...;by=...
                name, _, value = pair.partition("=")
                if name.strip().lower() == "for":
                    hops.append(value.strip())
    return [h for h in hops if h]


def _trusted(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_address(
    peer: str | None,
    forwarded: Sequence[str],
    networks: Sequence[IPNetwork],
    header: str = "x-forwarded-for",
) -> str:
    """The client of a request from ``peer`` (the socket's address) carrying ``forwarded``
    (every line of ``header``): ``peer`` unless it is in ``networks``; then the first hop,
    from the right, that is not a trusted proxy. A hop that is not an address (``unknown``,
    an obfuscated RFC 7239 id) is returned as its text, cut to ``MAX_TOKEN_CHARS``; when every
    hop is trusted, the leftmost one."""
    peer_address = parse_address(peer or "")
    if not _trusted(peer_address, networks):
        return str(peer_address) if peer_address is not None else (peer or "unknown")
    client = str(peer_address)
    for hop in reversed(forwarded_for(forwarded, header)):
        address = parse_address(hop)
        if address is None:
            return hop.strip('"')[:MAX_TOKEN_CHARS]
        client = str(address)
        if not _trusted(address, networks):
            return client
    return client


def request_client(request: web.Request, networks: Sequence[IPNetwork], header: str) -> str:
    """``client_address`` of an aiohttp request (X-Forwarded-For / Forwarded from its headers)."""
    if not networks:
        return request.remote or "unknown"
    return client_address(request.remote, request.headers.getall(header, ()), networks, header)
