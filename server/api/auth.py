"""Who a request acts as: the owner of its Bearer token or, in open mode, the local user.

With no users and a loopback listener the server is in open mode: every request acts as
the built-in local user, so the contract's example client (no auth header) works with zero
setup. Open mode serves only this machine: a request that came through a proxy, or whose
Host or browser Origin names another machine (DNS rebinding, a tunnel), is refused unless
that name is in --allowed-hosts.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import urlsplit

from server.contract import ApiError, ErrorCode
from server.store.accounts import Accounts, User, is_loopback


class Authenticator:
    """Who a request acts as: the owner of its Bearer token, or in open mode the local user."""

    def __init__(
        self, accounts: Accounts, host: str, insecure_no_auth: bool, allowed_hosts: str = ""
    ) -> None:
        self.accounts = accounts
        self.insecure_no_auth = insecure_no_auth
        self.open_mode_allowed = insecure_no_auth or is_loopback(host)
        self.allowed = AllowedHosts(allowed_hosts)
        self.local = accounts.local_user()  # fixed by the migrations: read once

    def user(self, headers: Mapping[str, str], scheme: str = "Bearer") -> User:
        """Who a request with these headers acts as; 401 with a `scheme` challenge (Basic
        for AUTOMATIC1111's clients) if no one, 403 if open mode refuses its Host."""
        # A valid token means users exist, so no open mode: the token is checked first and
        # the open-mode query runs only for requests without one (one query per request).
        authorization = headers.get("authorization")
        user = None
        token = api_token(authorization)
        if token:
            user = self.accounts.by_token(token)
        if user is not None:
            return user
        if self.open_mode(came_through_proxy(headers)):
            if not self.insecure_no_auth:
                self.allowed.check(headers)
            return self.local
        if not authorization:
            raise unauthorized(MISSING[scheme], None, scheme)
        raise unauthorized("Invalid or revoked API token", "invalid_token", scheme)

    def open_mode(self, forwarded: bool = False) -> bool:
        # Behind a reverse proxy a loopback listener is not private: no open mode then.
        if not self.open_mode_allowed or (forwarded and not self.insecure_no_auth):
            return False
        return not self.accounts.has_users()


def came_through_proxy(headers: Mapping[str, str]) -> bool:
    """Whether a proxy says it forwarded the request (then a loopback peer is not local)."""
    return "forwarded" in headers or "x-forwarded-for" in headers


def host_name(value: str) -> str:
    """The name of a Host header or URL authority, lower case, without port or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    name, colon, port = value.rpartition(":")
    if colon and (port.isdigit() or not port) and ":" not in name:
        value = name
    return value.rstrip(".")


class AllowedHosts:
    """Which names open mode answers to: loopback, and those of --allowed-hosts."""

    def __init__(self, names: str) -> None:
        entries = [host_name(one) for one in names.split(",") if one.strip()]
        self.any = "*" in entries
        self.exact = {one for one in entries if not one.startswith(".")}
        self.suffixes = tuple(one for one in entries if one.startswith("."))

    def allows(self, name: str) -> bool:
        return (
            self.any
            or is_loopback(name)
            or name in self.exact
            or bool(self.suffixes and name.endswith(self.suffixes))
        )

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise 403 if the Host, or a browser's Origin, names another machine."""
        host = headers.get("host")
        if host is not None and not self.allows(host_name(host)):
            raise forbidden("Host", host)
        origin = headers.get("origin")
        if origin is not None:
            try:
                name = urlsplit(origin).hostname or ""
            except ValueError:
                name = ""
            if not self.allows(name):
                raise forbidden("Origin", origin)


def forbidden(header: str, value: str) -> ApiError:
    return ApiError(
        ErrorCode.FORBIDDEN,
        f"Open mode (no users) serves only this machine, and this request's {header}"
        f" {value[:200]!r} names another. Add the name to --allowed-hosts"
        " (DARKROOM_ALLOWED_HOSTS), or create a user (darkroom users add NAME) and send"
        " its token.",
        {"reason": "host_not_allowed", "header": header.lower()},
        403,
    )


def api_token(authorization: str | None) -> str | None:
    """The token of `Bearer <token>`, or the password of HTTP Basic (AUTOMATIC1111's
    clients know only `--api-auth user:password`; the user name is not checked)."""
    scheme, _, credential = (authorization or "").partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer":
        return credential or None
    if scheme.lower() == "basic" and credential:
        try:
            decoded = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


MISSING = {
    "Bearer": "Missing API token: send 'Authorization: Bearer <token>'",
    "Basic": "Missing API token: send HTTP Basic credentials with the token as the password"
    " (AUTOMATIC1111's --api-auth user:<token>; any user name)",
}


def unauthorized(message: str, error: str | None, scheme: str = "Bearer") -> ApiError:
    # RFC 6750's error parameter belongs to the Bearer scheme only.
    challenge = f'{scheme} realm="darkroom"' + (
        f', error="{error}"' if error and scheme == "Bearer" else ""
    )
    return ApiError(
        ErrorCode.UNAUTHORIZED,
        message,
        {"reason": error or "missing_token"},
        401,
        {"WWW-Authenticate": challenge},
    )
