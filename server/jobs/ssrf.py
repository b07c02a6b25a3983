"""Where a webhook may go: no server-side request forgery.

Only http and https; the host must resolve to public addresses only (not loopback, private,
link-local, multicast, reserved, unspecified, shared or a cloud metadata service). Checked at
submit and again at every delivery, where the request then connects to the very address
that was checked (so a name that resolves elsewhere a moment later, DNS rebinding, gains
nothing). `allow_private` (--webhook-allow-private) skips the address check, not the scheme.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
MAX_URL_CHARS = 2048
# Cloud metadata services: AWS/GCP/Azure/OpenStack, AWS's IPv6 one, Alibaba's.
METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(Exception):
    """This URL may not receive webhooks (the message says why)."""


def url_problem(url: str) -> str | None:
    """What is wrong with the URL's form (None: nothing); no name is resolved."""
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    return None


def address_problem(address: str | Address) -> str | None:
    """Why a webhook may not be sent to this IP address (None: it may)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of a URL that passed url_problem."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname or "", port, path


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses, each checked; raises WebhookRefused if any may not be used
    (one bad address refuses the name: which one a client gets is not ours to choose),
    OSError if the name does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise OSError(f"{host} has no address")
    if not allow_private:
        for address in addresses:
            problem = address_problem(address)
            if problem:
                raise WebhookRefused(f"{host} resolves to {problem}")
    return addresses


def check(url: str, allow_private: bool) -> str | None:
    """At submit: why this URL may not receive webhooks (None: it may)."""
    problem = url_problem(url)
    if problem:
        return problem
    _, host, port, _ = target(url)
    try:
        resolve(host, port, allow_private)
    except WebhookRefused as exc:
        return f"{exc} (a server started with --webhook-allow-private sends webhooks there)"
    except (OSError, UnicodeError) as exc:
        return f"{host} does not resolve ({exc})"
    return None
