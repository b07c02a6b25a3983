"""The table of addresses no webhook or provider URL may reach (server/net/special.py),
checked against IANA's special-purpose registries as written here, row by row: the rule is
the table, the same on every Python version, not `ipaddress`'s is_* flags (which changed
between 3.10 and 3.13)."""

from __future__ import annotations

import ipaddress

import pytest

from server.net.special import SPECIAL_V4, SPECIAL_V6, TEREDO, special_purpose
from server.net.ssrf import address_problem, url_problem

# IANA IPv4 and IPv6 Special-Purpose Address Registries (every entry), plus multicast and
# the deprecated site-local range.
IANA_V4 = [
    "0.0.0.0/8", "0.0.0.0/32", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
    "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.0.0/29", "192.0.0.8/32",
    "192.0.0.9/32", "192.0.0.10/32", "192.0.0.170/32", "192.0.0.171/32", "192.0.2.0/24",
    "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4",
    "255.255.255.255/32", "224.0.0.0/4",
]  # fmt: skip
IANA_V6 = [
    "::1/128", "::/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "100:0:0:1::/64", "2001::/23", "2001:1::1/128", "2001:1::2/128", "2001:1::3/128",
    "2001:2::/48", "2001:3::/32", "2001:4:112::/48", "2001:10::/28", "2001:20::/28",
    "2001:30::/28", "2001:db8::/32", "2620:4f:8000::/48", "3fff::/20", "5f00::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
]  # fmt: skip


def corners(network: str) -> list[str]:
    net = ipaddress.ip_network(network)
    middle = net.network_address + net.num_addresses // 2
    return [str(net.network_address), str(middle), str(net.broadcast_address)]


@pytest.mark.parametrize("network", IANA_V4 + IANA_V6)
def test_every_registry_entry_is_refused(network: str) -> None:
    for address in corners(network):
        if address.startswith("::ffff:") or network == "2001::/23" and address.startswith(
            "2001:0:"
        ):
            continue  # judged by the IPv4 address inside (below)
        assert special_purpose(address) is not None, (network, address)
        assert address_problem(address) is not None


ROWS = SPECIAL_V4 + SPECIAL_V6


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_each_row_names_its_range(row: int) -> None:
    network, kind = ROWS[row]
    earlier = [net for net, _ in ROWS[:row] if net.version == network.version]
    for address in corners(str(network)):
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in earlier) or ip in TEREDO:
            continue  # a more specific row, or the IPv4 address inside, names it
        assert special_purpose(ip) == kind, (network, address)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
        "192.0.1.1", "198.17.255.255", "198.20.0.0", "223.255.255.255", "2606:4700:4700::1111",
        "2001:4860:4860::8888", "2001:200::1", "2a00:1450:4001::1",
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "2001:0:808:808::f7f7:f7f7",  # Teredo: server 8.8.8.8, client 8.8.8.8 (inverted)
        "::ffff:8.8.8.8",
    ],
)  # fmt: skip
def test_public_addresses_are_allowed(address: str) -> None:
    assert special_purpose(address) is None, address


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("2002:7f00:1::1", "loopback (127.0.0.1 inside"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "cloud metadata (169.254.169.254 inside"),
        ("2002:c0a8:0101::1", "private (192.168.1.1 inside"),
        ("2001:0:7f00:1::ffff:ffff", "loopback (127.0.0.1 inside"),  # Teredo server
        ("2001:0:808:808::f5ff:fefe", "private (10.0.1.1 inside"),  # Teredo client, inverted
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::8.8.8.8", "NAT64"),  # even a public IPv4 address behind NAT64
        ("fec0::1", "site-local"),
        ("fe80::1%eth0", "link-local"),
        ("::8.8.8.8", "reserved"),  # IPv4-compatible (deprecated)
        ("4000::1", "reserved"),  # outside global unicast
        ("100.100.100.200", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
    ],
)
def test_addresses_carrying_refused_ones(address: str, why: str) -> None:
    kind = special_purpose(address)
    assert kind is not None and kind.startswith(why), (address, kind)


@pytest.mark.parametrize(
    "url",
    ["http://user:secret@hooks.example.com/", "https://token@hooks.example.com/x",
     "http://:pw@hooks.example.com/", "https://hooks.example.com/\x00", "http://a\nb.example/"],
)  # fmt: skip
def test_urls_with_user_info_or_control_characters(url: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    if "@" in url:
        assert "user name or password" in problem
