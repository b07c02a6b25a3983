"""IANA's special-purpose address registries (IPv4 and IPv6, as of 2025), plus multicast,
the deprecated site-local range and the cloud metadata services, as an explicit table.

Python's `ipaddress` flags (is_private, is_global...) changed between 3.10 and 3.13, so the
rule is this table, tested row by row, not the library's opinion. An address may be used
as a webhook or provider target only if no row holds it, and an IPv6 one only inside the
global unicast space 2000::/3. IPv6 addresses that carry an IPv4 address (IPv4-mapped,
6to4, Teredo) are judged by the IPv4 addresses they carry.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

Address = IPv4Address | IPv6Address

# (network, what it is), most specific first: the first row holding an address names it.
SPECIAL_V4 = [
    (ip_network("169.254.169.254/32"), "cloud metadata"),
    (ip_network("100.100.100.200/32"), "cloud metadata"),
    (ip_network("0.0.0.0/8"), "this-network"),
    (ip_network("10.0.0.0/8"), "private"),
    (ip_network("100.64.0.0/10"), "shared (carrier-grade NAT)"),
    (ip_network("127.0.0.0/8"), "loopback"),
    (ip_network("169.254.0.0/16"), "link-local"),
    (ip_network("172.16.0.0/12"), "private"),
    (ip_network("192.0.0.0/24"), "IETF protocol assignment"),
    (ip_network("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (ip_network("192.31.196.0/24"), "AS112"),
    (ip_network("192.52.193.0/24"), "AMT"),
    (ip_network("192.88.99.0/24"), "6to4 relay anycast"),
    (ip_network("192.168.0.0/16"), "private"),
    (ip_network("192.175.48.0/24"), "AS112 direct delegation"),
    (ip_network("198.18.0.0/15"), "benchmarking"),
    (ip_network("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (ip_network("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (ip_network("224.0.0.0/4"), "multicast"),
    (ip_network("255.255.255.255/32"), "limited broadcast"),
    (ip_network("240.0.0.0/4"), "reserved"),
]

SPECIAL_V6 = [
    (ip_network("fd00:ec2::254/128"), "cloud metadata"),
    (ip_network("::/128"), "unspecified"),
    (ip_network("::1/128"), "loopback"),
    (ip_network("64:ff9b::/96"), "NAT64 (IPv4/IPv6 translation)"),
    (ip_network("64:ff9b:1::/48"), "local-use IPv4/IPv6 translation"),
    (ip_network("100::/64"), "discard-only"),
    (ip_network("100:0:0:1::/64"), "dummy prefix"),
    (ip_network("2001:db8::/32"), "documentation"),
    (ip_network("2001::/23"), "IETF protocol assignment"),
    (ip_network("2620:4f:8000::/48"), "AS112 direct delegation"),
    (ip_network("3fff::/20"), "documentation"),
    (ip_network("5f00::/16"), "segment routing SID"),
    (ip_network("fc00::/7"), "unique-local (private)"),
    (ip_network("fe80::/10"), "link-local"),
    (ip_network("fec0::/10"), "site-local"),
    (ip_network("ff00::/8"), "multicast"),
]

GLOBAL_UNICAST_V6 = ip_network("2000::/3")
TEREDO = ip_network("2001::/32")
SIX_TO_FOUR = ip_network("2002::/16")
IPV4_MAPPED = ip_network("::ffff:0:0/96")


def embedded_ipv4(ip: IPv6Address) -> list[IPv4Address] | None:
    """The IPv4 addresses an IPv4-mapped, 6to4 or Teredo address carries (Teredo: its
    server's and its client's), else None."""
    value = int(ip)
    if ip in IPV4_MAPPED:
        return [IPv4Address(value & 0xFFFFFFFF)]
    if ip in SIX_TO_FOUR:
        return [IPv4Address((value >> 80) & 0xFFFFFFFF)]
    if ip in TEREDO:  # the client's address is stored inverted
        return [IPv4Address((value >> 64) & 0xFFFFFFFF), IPv4Address(~value & 0xFFFFFFFF)]
    return None


def special_purpose(address: str | Address) -> str | None:
    """What special-purpose range holds the address ("private", "loopback", ...; for an
    address carrying an IPv4 one, what holds that), or None for an ordinary public one."""
    ip = ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            ip = IPv6Address(int(ip))  # fe80::1%eth0 is fe80::1
        carried = embedded_ipv4(ip)
        if carried is not None:
            for one in carried:
                kind = special_purpose(one)
                if kind is not None:
                    return f"{kind} ({one} inside {ip})"
            return None
        for network, kind in SPECIAL_V6:
            if ip in network:
                return kind
        if ip not in GLOBAL_UNICAST_V6:
            return "reserved (outside global unicast 2000::/3)"
        return None
    for network, kind in SPECIAL_V4:
        if ip in network:
            return kind
    return None
