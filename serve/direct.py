"""Streams that bypass the proxy: a replica's own listening port, and which replica serves which seed.

Behind Ray Serve every frame of a stream opened at the cluster's address passes through the node's
HTTP proxy, one process that tops out near a thousand messages a second (bench/NOTES.md, Ray Serve).
So each replica also serves its app on a port of its own (``DirectListener``), and
``GET /api/route?seed=S[&exclude=NAMES]``, answered through the proxy, ranks the replicas for
panorama S, with their addresses (``rank``: rendezvous hashing on the seed, so a seed stays on one
replica and its span cache while the replicas stay, and moves only when its replica leaves). The
client opens its stream at the first. When that replica is lost (its connection closes, or does
not open) the client resumes at its next column on the next replica of the list, without a round
trip through the proxy, which may not yet know the replica is gone; once the list is used up it asks
again with ``exclude`` naming the replicas it lost, and then streams through the proxy
(``serve/client.py``, ``static/viewer.js``).

Nothing here needs Ray: ``ray_app`` keeps the replicas' addresses and starts each listener once its
replica is warm (``AfterStartup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from typing import Awaitable, Callable, Mapping

from ..errors import SoatError

DIRECT_OFF, DIRECT_ANY = "off", "auto"  # direct_ports: no listener; any free port
STOP_TIMEOUT_S = 5.0  # a stopping listener's connections get this long to close

Router = Callable[[int, tuple[str, ...]], Awaitable["list[tuple[str, str]]"]]  # (seed, exclude) -> [(replica, url)]


def parse_direct_ports(value: str) -> tuple[int, int] | None:
    """``direct_ports``: ``off`` (None), ``auto`` (``(0, 0)``: any free port) or ``LO-HI`` (the first free port of
    that range, for firewalls; every replica on a node takes its own)."""
    if value == DIRECT_OFF:
        return None
    if value == DIRECT_ANY:
        return 0, 0
    lo, dash, hi = value.partition("-")
    if dash and lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535:
        return int(lo), int(hi)
    raise SoatError(f"direct_ports={value!r} must be {DIRECT_OFF}, {DIRECT_ANY} or LO-HI with "
                    f"1 <= LO <= HI <= 65535 (a range of ports, one per replica on a node)")


def rank(seed: int, replicas: Mapping[str, str], exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(name, url)`` of the replicas not in ``exclude``, in the order they serve ``seed``: by how high their name
    hashes with the seed (rendezvous hashing)."""
    names = sorted((name for name in replicas if name not in exclude),
                   key=lambda n: hashlib.blake2b(f"{seed}:{n}".encode(), digest_size=8).digest(), reverse=True)
    return [(name, replicas[name]) for name in names]


def _bind(host: str, ports: tuple[int, int]) -> socket.socket:
    """A listening socket on ``host`` at the first free port of ``ports`` (``(0, 0)``: any)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(ports[0], ports[1] + 1):
        try:
            return socket.create_server((host, port), family=family)
        except OSError as exc:
            last = exc
    raise SoatError(f"no port of {ports[0]}-{ports[1]} is free on {host} for a replica's direct connections "
                    f"({last.strerror}); give direct_ports a wider range, or off")


class DirectListener:
    """``app`` served by uvicorn on this event loop (the one the replica's other requests run on, so both share its
    batcher), from a port of its own; its lifespan is the replica's, run elsewhere (``lifespan="off"``)."""

    def __init__(self, server, task: asyncio.Task, port: int):
        self.server, self.task, self.port = server, task, port

    @classmethod
    async def start(cls, app, host: str, ports: tuple[int, int]) -> "DirectListener":
        """Listen on ``host`` at a port of ``ports`` (``parse_direct_ports``); raises SoatError if none is free."""
        from .app import uvicorn_server
        sock = _bind(host, ports)
        port = sock.getsockname()[1]
        server = uvicorn_server(app, host, port, log_level="warning", lifespan="off")
        server.capture_signals = contextlib.nullcontext  # the replica's process keeps its own signal handlers
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():  # it failed to start: its exception, or why it stopped
                sock.close()
                task.result()
                raise SoatError(f"the direct listener on {host}:{port} stopped as it started")
            await asyncio.sleep(0.01)
        return cls(server, task, port)

    async def stop(self) -> None:
        """Stop listening and close the connections still open (their clients resume elsewhere)."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), STOP_TIMEOUT_S)
        self.server.force_exit = True
        await asyncio.wait([self.task])


class AfterStartup:
    """ASGI middleware: ``started()`` once ``app``'s lifespan startup is complete (the replica is warm), before it
    says so; ``stopping()`` when its shutdown begins. If ``started()`` raises, the startup fails with its message."""

    def __init__(self, app, started: Callable[[], Awaitable[None]], stopping: Callable[[], Awaitable[None]]):
        self.app, self.started, self.stopping = app, started, stopping

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def sending(message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self.started()
                except Exception as exc:  # e.g. no free port: the replica does not start, and says why
                    message = {"type": "lifespan.startup.failed", "message": str(exc)}
            await send(message)

        async def receiving():
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stopping()
            return message

        await self.app(scope, receiving, sending)
