"""Who a request acts as: the owner of its Bearer token or, in open mode, the local user.

With no users and a loopback listener the server is in open mode: every request acts as
the built-in local user, so the contract's example client (no auth header) works with zero
setup.
"""

from __future__ import annotations

import base64
import binascii

from server.contract import ApiError, ErrorCode
from server.store.accounts import Accounts, User, is_loopback


class Authenticator:
    """Who a request acts as: the owner of its Bearer token, or in open mode the local user."""

    def __init__(self, accounts: Accounts, host: str, insecure_no_auth: bool) -> None:
        self.accounts = accounts
        self.insecure_no_auth = insecure_no_auth
        self.open_mode_allowed = insecure_no_auth or is_loopback(host)
        self.local = accounts.local_user()  # fixed by the migrations: read once

    def user(self, authorization: str | None, forwarded: bool) -> User:
        # A valid token means users exist, so no open mode: the token is checked first and
        # the open-mode query runs only for requests without one (one query per request).
        user = None
        token = api_token(authorization)
        if token:
            user = self.accounts.by_token(token)
        if user is not None:
            return user
        if self.open_mode(forwarded):
            return self.local
        if not authorization:
            raise unauthorized("Missing API token: send 'Authorization: Bearer <token>'", None)
        raise unauthorized("Invalid or revoked API token", "invalid_token")

    def open_mode(self, forwarded: bool = False) -> bool:
        # Behind a reverse proxy a loopback listener is not private: no open mode then.
        if not self.open_mode_allowed or (forwarded and not self.insecure_no_auth):
            return False
        return not self.accounts.has_users()


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


def unauthorized(message: str, error: str | None) -> ApiError:
    challenge = 'Bearer realm="darkroom"' + (f', error="{error}"' if error else "")
    return ApiError(
        ErrorCode.UNAUTHORIZED,
        message,
        {"reason": error or "missing_token"},
        401,
        {"WWW-Authenticate": challenge},
    )
