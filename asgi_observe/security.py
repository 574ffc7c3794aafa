"""Access control for the metrics endpoints: bearer token, CIDR allow-list, trusted proxies.

`MetricsGuard` wraps any ASGI app (normally `metrics_app`) and decides, before the app
sees the request, whether the caller may read it. The seed's first rule for ``/metrics``
is that it "should never be publicly accessible"; this module is the in-process half of
that rule (the other half is the internal port, see `asgi_observe.metrics.internal`).
Who the caller is follows the one rule of `asgi_observe.net`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import cast

from asgi_observe.net import IPNetwork, client_address, in_networks, parse_networks
from asgi_observe.settings import MIN_METRICS_TOKEN_LENGTH
from asgi_observe.types import ASGIApp, Receive, Scope, Send

__all__ = ["MIN_TOKEN_LENGTH", "MetricsGuard"]

logger = logging.getLogger("asgi_observe")

MIN_TOKEN_LENGTH = MIN_METRICS_TOKEN_LENGTH
"""Same floor as ``METRICS_TOKEN`` in `Settings`: shorter secrets are guessable."""

_REALM = b'Bearer realm="metrics"'
_INVALID_TOKEN = b'Bearer realm="metrics", error="invalid_token"'


def _check_token(token: str | None) -> bytes | None:
    if token is None:
        return None
    if not isinstance(cast(object, token), str):  # untyped callers (YAML configs)
        msg = f"invalid metrics token: expected a string, got {type(token).__name__}"
        raise TypeError(msg)
    if len(token) < MIN_TOKEN_LENGTH:
        msg = (
            f"invalid metrics token (METRICS_TOKEN): a bearer token must be at least "
            f"{MIN_TOKEN_LENGTH} characters long (got {len(token)})"
        )
        raise ValueError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        msg = (
            "invalid metrics token (METRICS_TOKEN): whitespace and control characters "
            "cannot be sent in an Authorization header"
        )
        raise ValueError(msg)
    return token.encode("utf-8")


def _bearer_token(scope: Scope) -> bytes | None:
    """The credentials of the first ``Authorization: Bearer`` header; None when absent.

    The scheme is case-insensitive (RFC 7235 section 2.1); anything else (another scheme,
    no token, embedded spaces) yields None rather than an error.
    """
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() != b"authorization":
            continue
        scheme, _, credentials = bytes(value).strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials or b" " in credentials:
            return None
        return credentials
    return None


class MetricsGuard:
    """Refuse callers outside the allow-list (403) or without the bearer token (401).

    Args:
        app: the ASGI app to protect.
        token: the shared secret expected in ``Authorization: Bearer <token>``; compared
            in constant time. At least 16 characters.
        allow: CIDRs (strings or `ipaddress` networks, or one comma-separated string)
            that may call the app. None or empty means no address restriction.
        trusted_proxies: CIDRs of reverse proxies whose ``X-Forwarded-For`` is believed.
            Without it the socket peer is the caller, whatever the headers say.

    The allow-list is checked first, so a caller from a refused address learns nothing
    about the token. HTTP and websocket scopes are guarded (a refused websocket is closed
    with code 1008 before it is accepted); lifespan passes through. Malformed headers are
    simply a refusal; a failure of the guard itself is logged and refuses (fail closed).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None = None,
        allow: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
        trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    ) -> None:
        self.app = app
        self._token = _check_token(token)
        self._allow = parse_networks(allow, name="allow (METRICS_ALLOW)")
        self._proxies = parse_networks(trusted_proxies, name="trusted_proxies (TRUSTED_PROXIES)")

    @property
    def active(self) -> bool:
        """Whether any check is configured (an inactive guard lets everything through)."""
        return self._token is not None or bool(self._allow)

    def _decide(self, scope: Scope) -> tuple[int, bytes]:
        """(status, WWW-Authenticate value): 0 means allowed."""
        if self._allow:
            caller = client_address(scope, self._proxies)
            if caller is None or not in_networks(caller, self._allow):
                return 403, b""
        if self._token is not None:
            presented = _bearer_token(scope)
            if presented is None:
                return 401, _REALM
            if not hmac.compare_digest(presented, self._token):
                return 401, _INVALID_TOKEN
        return 0, b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            status, challenge = self._decide(scope)
        except Exception:
            logger.exception("asgi_observe: the metrics guard failed; refusing the request")
            status, challenge = 403, b""
        if not status:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"Unauthorized\n" if status == 401 else b"Forbidden\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        if challenge:
            headers.append((b"www-authenticate", challenge))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
