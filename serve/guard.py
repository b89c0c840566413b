"""Which requests ``soat serve`` answers: Host and Origin must name the addresses it was started for.

A web page from another site can reach a server on the viewer's machine: a WebSocket is not bound by
the same-origin policy, and DNS rebinding gives a foreign name this machine's address. Such requests
name that site in their ``Host`` (rebinding) or ``Origin`` (a page's script) header. So every HTTP
request and WebSocket handshake of the app is answered only when

- its ``Host``, if it has one, names the address the server listens on (``--host``), ``localhost`` or a
  loopback address; with ``--host 0.0.0.0`` (or ``::``) also any IP address and this machine's host name;
- its ``Origin``, which browsers send with WebSocket handshakes and cross-site requests, names such an
  address too (``null`` does not);
- or that name was allowed with ``--allow-origin NAME`` (a host name, or an origin such as
  ``https://viewer.example.com``; ``*`` allows every name).

Ports are not compared (a reverse proxy may listen on another). Anything else gets ``403`` with a JSON
``{"error": ...}`` (a WebSocket handshake: HTTP 403 before the upgrade), naming the flag that allows it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse

from .protocol import CLOSE_POLICY, close_reason

LOOPBACK = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("", "0.0.0.0", "::")  # a --host that listens on every interface
ANY_NAME = "*"


def hostname(text: str) -> str | None:
    """The host name in a Host header (``name:port``, ``[::1]:8765``), an origin (``https://name:port``) or an
    ``--allow-origin`` value, lowercased, without port, brackets or a final dot; None if there is none."""
    text = text.strip()
    try:
        name = urlsplit(text if "://" in text else "//" + text).hostname
    except ValueError:
        return None
    return name.rstrip(".") or None if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The host names a server started on ``host`` answers, plus ``allow`` (``--allow-origin`` values)."""

    def __init__(self, host: str = "127.0.0.1", allow: Iterable[str] = ()):
        allow = tuple(allow)
        self.host = host
        self.anything = ANY_NAME in allow
        self.any_ip = host.strip("[]") in ANY_ADDRESS
        self.names = set(LOOPBACK) | {n for n in map(hostname, (host, *allow)) if n}
        if self.any_ip:
            self.names.add(socket.gethostname().lower())

    def allows(self, name: str | None) -> bool:
        if self.anything:
            return True
        return name is not None and (name in self.names or (self.any_ip and _is_ip(name)))

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Why a request with these headers is not answered, or None."""
        for key, value in headers:
            key = key.lower()
            if key in (b"host", b"origin"):
                text = value.decode("latin-1")
                if (text or key == b"origin") and not self.allows(hostname(text)):
                    what = "Host" if key == b"host" else "Origin"
                    name = hostname(text) or text
                    return (f"{what} {text[:100]!r} is not an address of this server (started for "
                            f"{self.host or '0.0.0.0'}); to answer it, start soat serve with --allow-origin "
                            f"{name[:100]}")
        return None


class HostGuard:
    """ASGI middleware: HTTP requests and WebSocket handshakes whose Host or Origin ``hosts`` refuses get 403."""

    def __init__(self, app, hosts: AllowedHosts):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope, receive, send) -> None:
        refusal = self.hosts.refusal(scope["headers"]) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send)
        else:
            # closed before it is accepted: the server answers the handshake with 403
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": close_reason(refusal)})
