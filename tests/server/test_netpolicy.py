"""The address policy of outgoing connections (server/netpolicy.py): special-purpose ranges
refused, IPv4 addresses inside IPv6 translation prefixes unwrapped and checked, numeric host
spellings read as addresses. Literal addresses only: nothing here resolves a name."""

from __future__ import annotations

import pytest

from server import netpolicy

REFUSED = [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix -> 169.254.169.254 (metadata)
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64
    "64:ff9b:1::808:808",  # local-use NAT64 translates into the operator's own networks
    "2002:a9fe:a9fe::",  # 6to4 of the metadata address
    "2002:7f00:1::1",  # 6to4 of loopback
    "::169.254.169.254",  # IPv4-compatible
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::8.8.8.8",  # IPv4-compatible is deprecated: refused whatever it carries
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "192.0.0.8",  # IETF protocol assignments (is_global on Python 3.11)
    "192.0.0.170",
    "198.18.0.1",  # benchmarking
    "100.64.0.1",  # carrier-grade NAT
    "224.0.0.1",  # multicast (is_global on Python 3.11)
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "192.0.2.1",  # documentation
    "198.51.100.1",
    "203.0.113.1",
    "::",
    "::1",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "fe80::1",  # link-local
    "fe80::1%eth0",
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "3fff::1",
    "100::1",  # discard
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_special_purpose_addresses_are_refused(address):
    assert netpolicy.refusal(address) is not None
    with pytest.raises(netpolicy.AddressRefused, match="non-public"):
        netpolicy.check_addresses("h", [address], allow_private=False)
    assert netpolicy.check_addresses("h", [address], allow_private=True)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert netpolicy.refusal(address) is None
    assert netpolicy.check_addresses("h", [address], allow_private=False) == [address]


def test_one_refused_answer_among_public_ones_refuses_the_host():
    with pytest.raises(netpolicy.AddressRefused, match="10.0.0.1"):
        netpolicy.check_addresses("h", ["8.8.8.8", "10.0.0.1"], allow_private=False)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2852039166", "169.254.169.254"),  # decimal
        ("0251.0376.0251.0376", "169.254.169.254"),  # octal
        ("0xa9fea9fe", "169.254.169.254"),  # hex
        ("0xA9.0xFE.0xA9.0xFE", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),  # a.b.c with a 16-bit last part
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),  # the root's trailing dot
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe"),
    ],
)
def test_numeric_spellings_are_read_as_addresses_and_refused(host, address):
    assert str(netpolicy.literal(host)) == address
    with pytest.raises(netpolicy.AddressRefused, match="non-public"):
        netpolicy.resolve(host, 80, allow_private=False)  # no lookup: a literal is itself


def test_a_number_that_is_no_address_is_refused_not_looked_up():
    with pytest.raises(netpolicy.AddressRefused, match="not an IPv4 address"):
        netpolicy.literal("99999999999")
    assert netpolicy.literal("example.com") is None
    assert netpolicy.literal("deadbeef") is None  # a name made of hex letters is a name


@pytest.mark.parametrize("host", ["64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "192.0.0.8"])
def test_webhook_delivery_checks_with_the_same_policy(host):
    """The delivery path (``webhooks.resolve``, before each attempt) refuses what submission
    refuses, with the webhook's own error and flag."""
    from server.jobs import webhooks
    from server.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="--webhook-allow-private") as caught:
        webhooks.resolve(host, 80, allow_private=False)
    assert caught.value.param == "webhook_url"
    assert webhooks.resolve(host, 80, allow_private=True) == [host]
