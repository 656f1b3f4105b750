"""Access control for the dashboard: loopback by default, a bearer token otherwise.

Bound to a loopback address the dashboard is reachable only from this machine (and through an
SSH tunnel or ``kubectl port-forward``), so no token is needed. Bound to any other interface it
requires a token: given with ``--token``, taken from ``BOLDCLOUD_DASHBOARD_TOKEN``, or generated.
Every request must then carry it as ``Authorization: Bearer <token>``, in the cookie set when a
browser opens the printed ``...?token=<token>`` link (then redirected to the same URL without
it, so it stays out of the address bar and history), or it gets 401.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

TOKEN_ENV = "BOLDCLOUD_DASHBOARD_TOKEN"
COOKIE = "boldcloud_dashboard_token"
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]{8,}")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(
    host: str, token: str | None = None, environ: MutableMapping[str, str] | None = None
) -> tuple[str | None, bool]:
    """The token the dashboard requires, and whether it was generated here.

    Parameters
    ----------
    host : str
        Interface the server binds.
    token : str, optional
        ``--token``; wins over the environment.
    environ : mapping, optional
        Where :data:`TOKEN_ENV` is looked up (default ``os.environ``).

    Returns
    -------
    (token or None, generated)
        None only for a loopback host without a configured token.

    Raises
    ------
    ValueError
        A configured token shorter than 8 characters or with characters unsafe in a cookie.
    """
    environ = os.environ if environ is None else environ
    chosen = token or environ.get(TOKEN_ENV) or None
    if chosen:
        if not TOKEN_CHARS.fullmatch(chosen):
            raise ValueError(
                "the dashboard token may only use letters, digits and . _ ~ + / = -; "
                "e.g. generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        return chosen, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


class TokenMiddleware:
    """Pure ASGI middleware: 401 for every HTTP request without the token.

    Parameters
    ----------
    app : ASGI app
        The wrapped application.
    token : str
        The shared secret (compared in constant time).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    def _matches(self, candidate: str | None) -> bool:
        return bool(candidate) and secrets.compare_digest(
            str(candidate).encode(), self.token.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is simply no cookie
            cookies = SimpleCookie()
        cookie = cookies[COOKIE].value if COOKIE in cookies else None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == "token"), None)
        if self._matches(from_query) and scope["type"] == "http":
            await self._redirect_with_cookie(scope, query, send)
            return
        if self._matches(bearer) or self._matches(cookie):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        body = (
            b"401 Unauthorized: this dashboard requires its token. Open the link printed by "
            b"`boldcloud dashboard` (...?token=...) or send 'Authorization: Bearer <token>'.\n"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"www-authenticate", b'Bearer realm="boldcloud"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _redirect_with_cookie(self, scope: Scope, query: list, send: Send) -> None:
        """303 to the same path without ``token``, setting the session cookie."""
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


class SecurityHeaders:
    """Adds no-referrer, no-sniff and no-framing headers to every HTTP response."""

    HEADERS = (
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, add_headers)
