"""Refuse requests that a web page on another site made a browser send (HTTP 403).

DNS rebinding: a page on ``evil.example`` re-points its own name at 127.0.0.1, and the
browser then sends the page's requests to this server, with ``Host: evil.example``. Only
the address the server is bound to and ``localhost`` (for a loopback address, also
127.0.0.1 and [::1]; for a wildcard address such as 0.0.0.0, any IP address, which no DNS
name can stand for) are accepted as ``Host``, with or without the bound port.

Cross-site posts: a page elsewhere can make a browser post a form here. A request that
changes state (any method but GET, HEAD, OPTIONS) is refused when its ``Origin`` is not
this server's own origin (``null`` included) or its ``Sec-Fetch-Site`` says
``cross-site``. Clients that send neither header (curl, httpx) are not browsers acting for
a page, and pass.
"""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_HOST = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::([0-9]{1,5}))?$")
_QUOTED = 100  # characters of a refused header quoted back


def _normal_host(name: str) -> str | None:
    """``name`` (an address or DNS name, IPv6 with or without brackets) as compared: lower
    case, IP addresses in their standard form, IPv6 in brackets; None when malformed."""
    name = name.strip().lower()
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name if _HOST.match(name) and ":" not in name else None
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]:port``) as its normal host and
    port (None when absent); None when malformed."""
    match = _HOST.match(value.strip().lower())
    if match is None:
        return None
    host = _normal_host(match.group(1))
    port = int(match.group(2)) if match.group(2) else None
    return (host, port) if host is not None else None


class AllowedHosts:
    """Which ``Host`` values a server bound to ``host`` (port ``port``; None: any port)
    answers, as described in this module."""

    def __init__(self, host: str, port: int | None) -> None:
        bound = _normal_host(host) or host
        self.names = {bound, "localhost"}
        self.port = port
        self.any_address = False
        try:
            address = ipaddress.ip_address(bound.strip("[]"))
        except ValueError:
            address = None
        if address is not None and address.is_unspecified:
            self.any_address = True
        if bound == "localhost" or (address is not None and address.is_loopback):
            self.names |= {"127.0.0.1", "[::1]"}

    def __call__(self, value: str) -> bool:
        parts = split_host(value)
        if parts is None:
            return False
        host, port = parts
        if port is not None and self.port is not None and port != self.port:
            return False
        return host in self.names or (self.any_address and _is_address(host))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def cross_site_reason(method: str, headers: dict[bytes, bytes], host: str) -> str | None:
    """Why a request with ``method`` and ``headers``, sent to ``host`` (its accepted
    ``Host`` header), comes from another site; None when it does not, or changes
    nothing."""
    if method.upper() in SAFE_METHODS:
        return None
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if fetch_site == "cross-site":
        return "the browser marked it Sec-Fetch-Site: cross-site"
    origin = headers.get(b"origin")
    if origin is None:
        return None
    origin_text = origin.decode("latin-1").strip()
    if _origin_key(origin_text) != _origin_key("http://" + host):
        return f"its Origin {origin_text[:_QUOTED]!r} is not this server's page"
    return None


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, normal host, port) of an origin URL; None for ``null`` or a malformed one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = _normal_host(parts.hostname)
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme, host, port or default) if host else None


class RequestGuard:
    """ASGI middleware: 403 with ``{"error": ...}`` for a ``Host`` that ``allowed``
    refuses and for a cross-site request that changes state (`cross_site_reason`)."""

    def __init__(self, app, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.allowed(host):
            return await send_json_error(
                send,
                403,
                f"this server does not answer for host {host[:_QUOTED]!r}: open it as "
                "localhost or by the address it was started with (a page on another "
                "site may have pointed its own name here)",
            )
        reason = cross_site_reason(scope.get("method", "GET"), headers, host)
        if reason is not None:
            return await send_json_error(
                send,
                403,
                f"cross-site request refused ({reason}); use the page this server serves, "
                "or a client that is not a browser",
            )
        return await self.app(scope, receive, send)


async def send_json_error(send, status: int, message: str) -> None:
    """Answer an ASGI request with ``status`` and ``{"error": message}`` (from middleware,
    before the app runs)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
