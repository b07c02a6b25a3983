"""Where a webhook may go: no server-side request forgery.

Only http and https, without user-info; the host must resolve to public addresses only
(none of special.py's special-purpose ranges: loopback, private, link-local, multicast,
reserved, shared, NAT64, 6to4 or Teredo carrying one of those, a cloud metadata service...).
Checked at submit and again at every delivery, where the request then connects to the very
address that was checked (so a name that resolves elsewhere a moment later, DNS rebinding,
gains nothing). `allow_private` (--webhook-allow-private) skips the address check, not the
URL's form.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from server.net.special import Address, special_purpose

SCHEMES = ("http", "https")
MAX_URL_CHARS = 2048


class WebhookRefused(Exception):
    """This URL may not receive webhooks (the message says why)."""


def url_problem(url: str) -> str | None:
    """What is wrong with the URL's form (None: nothing); no name is resolved."""
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    if not url.isprintable():
        return "must not contain control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if "@" in parts.netloc:
        # Credentials in a URL are stored and shown with it and never sent: refuse them.
        return (
            "must not contain a user name or password (user:secret@...): deliveries are"
            " signed instead (Standard Webhooks' webhook-signature header)"
        )
    return None


def address_problem(address: str | Address) -> str | None:
    """Why a webhook may not be sent to this IP address (None: it may)."""
    kind = special_purpose(address)
    return f"{address} is a {kind} address, not a public one" if kind else None


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


def handed_url_problem(url: str, trusted: str) -> str | None:
    """Why a URL a remote provider handed back (a status, result or image URL) may not be
    fetched (None: it may). On the host of `trusted`, the URL the operator configured, it
    may go anywhere that host is; elsewhere it must resolve to public addresses only."""
    problem = url_problem(url)
    if problem:
        return problem
    _, host, port, _ = target(url)
    if host == (urlsplit(trusted).hostname or ""):
        return None
    return check(url, allow_private=False)
