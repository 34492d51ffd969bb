"""``client_address``: the peer, or what trusted proxies report, read right to left."""

from __future__ import annotations

import pytest

from server.http.client_address import client_address, forwarded_for, trusted_networks

PROXIES = trusted_networks(["10.0.0.0/8", "127.0.0.1", "fd00::/8"])


@pytest.mark.parametrize(
    "peer, header, expected",
    [
        ("198.51.100.4", ["203.0.113.1"], "198.51.100.4"),  # untrusted peer: header ignored
        ("127.0.0.1", [], "127.0.0.1"),  # a trusted peer without a header is the client
        ("127.0.0.1", ["203.0.113.1"], "203.0.113.1"),
        ("10.1.2.3", ["1.1.1.1, 203.0.113.1"], "203.0.113.1"),  # the client's own entry: left
        ("10.1.2.3", ["203.0.113.1, 10.9.9.9"], "203.0.113.1"),  # past a trusted hop
        ("10.1.2.3", ["203.0.113.1", "10.9.9.9"], "203.0.113.1"),  # several header lines
        ("10.1.2.3", ["10.0.0.5, 10.9.9.9"], "10.0.0.5"),  # all trusted: the leftmost
        ("10.1.2.3", ["203.0.113.1:5555"], "203.0.113.1"),  # a port
        ("10.1.2.3", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::ffff:127.0.0.1", ["203.0.113.1"], "203.0.113.1"),  # IPv4-mapped peer
        ("fd00::1", ["2001:db8::7"], "2001:db8::7"),
        ("10.1.2.3", ["unknown"], "unknown"),  # not an address: its text
        ("10.1.2.3", ["x" * 500], "x" * 64),
        ("10.1.2.3", ["203.0.113.1, garbage, 10.9.9.9"], "garbage"),  # stop at the unreadable
    ],
)
def test_x_forwarded_for(peer, header, expected):
    assert client_address(peer, header, PROXIES) == expected


def test_forwarded_rfc7239():
    header = ['for=192.0.2.43, for="[2001:db8:cafe::17]:4711";proto=https', "For=10.0.0.9;by=x"]
    assert forwarded_for(header, "forwarded") == [
        "192.0.2.43",
        '"[2001:db8:cafe::17]:4711"',
        "10.0.0.9",
    ]
    assert client_address("127.0.0.1", header, PROXIES, "forwarded") == "2001:db8:cafe::17"


def test_a_bad_trusted_proxy_is_refused():
    with pytest.raises(ValueError, match="--trusted-proxy 'example.com'"):
        trusted_networks(["example.com"])
