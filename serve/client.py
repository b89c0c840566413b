"""A Python client's way to a tile stream: through the server's address, or straight to the replica that
``/api/route`` names for its seed (``direct``), falling back to the server's address when that connection
does not open. The benchmarks and the fault drill use it; the browser viewer does the same in JavaScript.
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


async def route(base_url: str, seed: int, exclude: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """``(replica, its base URL)`` that ``/api/route`` names for ``seed``, or None where the server has no direct
    route."""
    query = {"seed": seed, **({"exclude": ",".join(exclude)} if exclude else {})}
    url = f"{base_url}/api/route?{urllib.parse.urlencode(query)}"

    def get() -> dict:
        with urllib.request.urlopen(url, timeout=OPEN_TIMEOUT_S) as r:
            return json.loads(r.read())

    try:
        answer = await asyncio.to_thread(get)
    except urllib.error.HTTPError as exc:
        if exc.code in NO_ROUTE:
            return None
        raise
    return answer["replica"], answer["url"]


@asynccontextmanager
async def open_stream(base_url: str, seed: int, x: int = 0, tile: int | None = None, fmt: str = "jpeg",
                      batch: int = 1, direct: bool = False, exclude: tuple[str, ...] = ()) -> AsyncIterator:
    """``(ws, direct)``: a stream's open WebSocket (``websockets``' client connection) and whether it went straight
    to a replica. With ``direct``, to the replica ``/api/route`` names for ``seed`` other than ``exclude``, and
    through ``base_url`` if there is none or its connection does not open."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    ws = None
    target = await route(base_url, seed, exclude) if direct else None
    if target is not None:
        try:
            ws = await connect(stream_url(target[1], seed, x, tile, fmt, batch), max_size=None,
                               open_timeout=OPEN_TIMEOUT_S)
        except (OSError, InvalidHandshake, asyncio.TimeoutError):  # unreachable from here: the server's address
            ws = None
    went_direct = ws is not None
    if ws is None:
        ws = await connect(stream_url(base_url, seed, x, tile, fmt, batch), max_size=None, open_timeout=OPEN_TIMEOUT_S)
    async with ws:
        yield ws, went_direct
