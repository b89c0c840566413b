"""A Python client's way to a tile stream: through the server's address, or straight to the replicas that
``/api/route`` ranks for its seed (``direct``), the next one when a replica is lost, and the server's address
when none is left. The benchmarks and the fault drill use it; the browser viewer does the same in JavaScript.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from contextlib import asynccontextmanager
from typing import AsyncIterator

OPEN_TIMEOUT_S = 60.0
NO_ROUTE = (404, 503)  # no /api/route (plain soat serve), or no replica takes direct streams


def stream_url(base_url: str, seed: int, x: int = 0, tile: int | None = None, fmt: str = "jpeg",
               batch: int = 1) -> str:
    """The WebSocket URL of a stream from the server (or replica) at ``base_url`` (``http://host:port``)."""
    query = {"seed": seed, "x": x, "format": fmt}
    if tile is not None:
        query["tile"] = tile
    if batch != 1:
        query["batch"] = batch
    return base_url.replace("http", "ws", 1) + "/api/stream?" + urllib.parse.urlencode(query)


async def ranked_replicas(base_url: str, seed: int, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(replica, its base URL)`` pairs that ``/api/route`` ranks for ``seed``, best first; none where the server
    has no direct route."""
    query = {"seed": seed, **({"exclude": ",".join(exclude)} if exclude else {})}
    url = f"{base_url}/api/route?{urllib.parse.urlencode(query)}"

    def get() -> dict:
        with urllib.request.urlopen(url, timeout=OPEN_TIMEOUT_S) as r:
            return json.loads(r.read())

    try:
        answer = await asyncio.to_thread(get)
    except urllib.error.HTTPError as exc:
        if exc.code in NO_ROUTE:
            return []
        raise
    return [(r["replica"], r["url"]) for r in answer["replicas"]]


class Route:
    """Where the streams of one seed go: with ``direct``, the replicas ``/api/route`` ranked, best first, less those
    ``lose`` dropped; once none is left it asks again (excluding every replica lost), and with none then, or without
    ``direct``, the server's address ``base_url``."""

    def __init__(self, base_url: str, seed: int, direct: bool = False):
        self.base_url, self.seed, self.direct = base_url, seed, direct
        self.replicas: list[tuple[str, str]] = []
        self.lost: list[str] = []

    async def next(self) -> tuple[str | None, str]:
        """``(replica, base URL)`` to connect to now; replica None: the server's address."""
        if self.direct and not self.replicas:
            self.replicas = await ranked_replicas(self.base_url, self.seed, tuple(self.lost))
        return self.replicas[0] if self.replicas else (None, self.base_url)

    def lose(self, replica: str | None) -> None:
        """``replica``'s connection closed or did not open: the next one of the ranking from now on."""
        if replica is not None:
            self.replicas = [r for r in self.replicas if r[0] != replica]
            self.lost.append(replica)


@asynccontextmanager
async def open_stream(route: Route, x: int = 0, tile: int | None = None, fmt: str = "jpeg",
                      batch: int = 1) -> AsyncIterator:
    """``(ws, replica)``: an open WebSocket (``websockets``' client connection) of ``route``'s seed from column ``x``,
    at the first of ``route``'s replicas whose connection opens (``replica``: its name), else at the server's
    address (None)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    while True:
        replica, base_url = await route.next()
        try:
            ws = await connect(stream_url(base_url, route.seed, x, tile, fmt, batch), max_size=None,
                               open_timeout=OPEN_TIMEOUT_S)
            break
        except (OSError, InvalidHandshake, asyncio.TimeoutError):
            if replica is None:  # the server's own address: nothing else to try
                raise
            route.lose(replica)
    async with ws:
        yield ws, replica
