"""One WebSocket tile stream: credits in, frames out (wire format in ``protocol``).

Two tasks per connection: the reader turns ``{"credit": n}`` messages into credit;
the writer, against each credit, asks the batcher for the next tile (up to
``PIPELINE`` at once), stitches and encodes it in the encoder pool (off the event loop)
and sends the frames in order. Frames go out without per-message deflate (``app``):
JPEG, PNG and WebP do not compress further, and zlib on the event loop cost more than
everything else per frame.
A tile is computed only against a credit, so a connection never holds more than
what its client granted. A third task closes a stream that has asked for no frame for the
server's ``stream_idle_s`` (nothing owed all that time), so idle connections do not hold slots.
When either task ends (disconnect, bad message, generator failure) the other is
cancelled and nothing of the connection is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..runtime.endless import stitch
from .protocol import (CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_UNSUPPORTED, HEADER, MAX_CREDIT, ProtocolError,
                       StreamQuery, close_reason, encode_image, pack_frame, parse_credit)

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("soat.serve")
PIPELINE = 8  # tiles of one stream computed concurrently (two full batches in flight on a GPU)


class Credit:
    """Frames the client has granted: not yet started (``unspent``) and not yet sent (``owed``)."""

    def __init__(self):
        self.unspent = 0
        self.owed = 0
        self.idle_since: float | None = time.monotonic()  # since when nothing is owed (None: frames are)
        self._granted = asyncio.Event()

    def grant(self, n: int) -> None:
        self.unspent += n
        self.owed += n
        self.idle_since = None
        self._granted.set()

    def sent(self) -> None:
        self.owed -= 1
        if self.owed == 0:
            self.idle_since = time.monotonic()

    async def take(self) -> None:
        while self.unspent == 0:
            self._granted.clear()
            await self._granted.wait()
        self.unspent -= 1


async def close_with_error(ws: WebSocket, code: int, message: str) -> None:
    """Tell the client why (a JSON error message, then the close frame's reason) and close."""
    reason = close_reason(message)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the client may already be gone
        await ws.send_text(json.dumps({"type": "error", "error": message}))
        await ws.close(code=code, reason=reason)


async def serve_stream(ws: WebSocket, server: Server, query: StreamQuery) -> None:
    """Run one accepted stream until the client leaves or breaks the protocol."""
    await ws.send_text(json.dumps({"type": "hello", "size": server.G.size, "seed": query.seed, "x": query.x,
                                   "tile": query.tile, "format": query.format, "max_credit": MAX_CREDIT,
                                   "header_bytes": HEADER.size}))
    credit = Credit()
    tasks = [asyncio.create_task(_read(ws, credit)), asyncio.create_task(_write(ws, credit, server, query)),
             asyncio.create_task(_close_when_idle(credit, server.stream_idle_s))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the server shuts down and cancels this handler
        for task in tasks:
            task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, ProtocolError):
            await close_with_error(ws, outcome.code, outcome.reason)
            return
        if isinstance(outcome, Exception) and not isinstance(outcome, (WebSocketDisconnect, OSError)):
            log.exception("stream failed", exc_info=outcome)
            await close_with_error(ws, CLOSE_INTERNAL, f"the generator failed: {outcome}")
            return


async def _read(ws: WebSocket, credit: Credit) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            raise ProtocolError(CLOSE_UNSUPPORTED, 'binary messages are not accepted; send text {"credit": n}')
        credit.grant(parse_credit(message.get("text") or "", credit.unspent))


async def _write(ws: WebSocket, credit: Credit, server: Server, query: StreamQuery) -> None:
    # Up to PIPELINE tiles of one stream are computed at once (their spans may share a batch);
    # they are sent strictly in order.
    inflight: deque[asyncio.Task] = deque()
    seq, column = 0, query.x
    try:
        while True:
            while len(inflight) < PIPELINE and (credit.unspent > 0 or not inflight):
                await credit.take()
                inflight.append(asyncio.create_task(_frame(server, query, seq, column, len(inflight))))
                seq += 1
                column += query.tile
            await ws.send_bytes(await inflight.popleft())
            credit.sent()
    finally:
        for task in inflight:
            task.cancel()


async def _close_when_idle(credit: Credit, idle_s: float) -> None:
    """Ends the stream (``ProtocolError``, close code ``CLOSE_IDLE``) once nothing has been owed for ``idle_s``."""
    while True:
        left = idle_s if credit.idle_since is None else credit.idle_since + idle_s - time.monotonic()
        if left <= 0:
            raise ProtocolError(CLOSE_IDLE, f"idle: no frame asked for in {idle_s:g} s; reconnect to go on")
        await asyncio.sleep(left)


async def _frame(server: Server, query: StreamQuery, seq: int, column: int, rank: int) -> bytes:
    pieces, parts = await server.batcher.tile_parts(query.seed, column, query.tile, rank)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(server.encoder, _encode_frame, server.G.size, pieces, parts, query, seq, column)


def _encode_frame(size: int, pieces, parts, query: StreamQuery, seq: int, column: int) -> bytes:
    """In an encoder thread: stitch the tile from its spans' pixels, encode it, frame it."""
    payload = encode_image(stitch(size, pieces, parts, query.tile), query.format, True)
    return pack_frame(seq % 2 ** 32, column, query.tile, query.format, payload)
