"""One WebSocket tile stream: credits in, frames out (wire format in ``protocol``).

Two tasks per connection: the reader turns ``{"credit": n}`` messages into credit;
the writer, against each credit, asks the batcher for the next message's tiles (one, or the
query's ``batch``; up to ``PIPELINE`` tiles at once, or two messages' worth), stitches and encodes
each in the encoder pool (off the event loop) and sends the messages in order. Frames go out without per-message deflate (``app``):
JPEG, PNG and WebP do not compress further, and zlib on the event loop cost more than
everything else per frame.
A tile is computed only against a credit, so a connection never holds more than
what its client granted. A third task closes a stream that has asked for no frame for the
server's ``stream_idle_s`` (nothing owed all that time), so idle connections do not hold slots.
When either task ends (disconnect, bad message, generator failure) the other is
cancelled and nothing of the connection is left behind.

A drain (``LiveStreams.drain``, on SIGTERM) stops every stream from starting frames: each sends
the frames it has started, then closes with ``CLOSE_RECONNECT`` naming the column to resume at.
Every stream that ends is counted and logged once (``metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..runtime.endless import stitch
from .protocol import (CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_RECONNECT, CLOSE_UNSUPPORTED, HEADER, MAX_CREDIT,
                       ProtocolError, StreamQuery, batch_message, close_reason, frame_header, parse_credit)

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("soat.serve")
PIPELINE = 8  # tiles of one stream computed concurrently (two batch messages' worth, if more)
_CODE_REASONS = {CLOSE_IDLE: "idle", CLOSE_RECONNECT: "drain"}  # closes the server chose; others: the client's fault


class Credit:
    """Messages the client has granted: not yet started (``unspent``) and not yet sent (``owed``); frames
    (tiles) sent; whether the stream may start more (``stopped``: the server drains)."""

    def __init__(self):
        self.unspent = 0
        self.owed = 0
        self.frames = 0
        self.stopped = False
        self.idle_since: float | None = time.monotonic()  # since when nothing is owed (None: frames are)
        self._granted = asyncio.Event()

    def grant(self, n: int) -> None:
        self.unspent += n
        self.owed += n
        self.idle_since = None
        self._granted.set()

    def sent(self, frames: int) -> None:
        """A message of ``frames`` frames went out."""
        self.owed -= 1
        self.frames += frames
        if self.owed == 0:
            self.idle_since = time.monotonic()

    def stop(self) -> None:
        self.stopped = True
        self._granted.set()

    async def take(self) -> bool:
        """Spend one credit (True), waiting for one; False once the stream is stopped."""
        while self.unspent == 0 and not self.stopped:
            self._granted.clear()
            await self._granted.wait()
        if self.stopped:
            return False
        self.unspent -= 1
        return True


class LiveStreams:
    """The credits of a server's open streams, so that a drain can stop them all."""

    def __init__(self):
        self.credits: set[Credit] = set()
        self.draining = False

    @contextlib.contextmanager
    def open(self):
        """A new stream's credit (stopped at once while the server drains), forgotten when it ends."""
        credit = Credit()
        if self.draining:
            credit.stop()
        self.credits.add(credit)
        try:
            yield credit
        finally:
            self.credits.discard(credit)

    async def drain(self, timeout_s: float, abandon: Callable[[], bool] = lambda: False) -> int:
        """Stop every stream, present and future, from starting frames, and wait up to ``timeout_s`` (or
        until ``abandon()``) for them to send what they started and close; returns the streams still open."""
        self.draining = True
        for credit in self.credits:
            credit.stop()
        deadline = time.monotonic() + timeout_s
        while self.credits and time.monotonic() < deadline and not abandon():
            await asyncio.sleep(0.05)
        return len(self.credits)


async def close_with_error(ws: WebSocket, code: int, message: str) -> None:
    """Tell the client why (a JSON error message, then the close frame's reason) and close."""
    reason = close_reason(message)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the client may already be gone
        await ws.send_text(json.dumps({"type": "error", "error": message}))
        await ws.close(code=code, reason=reason)


async def refuse(ws: WebSocket, server: Server, code: int, message: str, client: str,
                 query: StreamQuery | None = None) -> None:
    """Close a stream before it starts (a bad query, a limit reached), counted and logged as refused."""
    await close_with_error(ws, code, message)
    server.metrics.stream_closed(_fields(query, client, 0, 0.0, "refused", code))


async def serve_stream(ws: WebSocket, server: Server, query: StreamQuery, client: str) -> None:
    """Run one accepted stream until the client leaves or breaks the protocol, or the server drains."""
    started = time.monotonic()
    reason, code = "drain", CLOSE_RECONNECT  # unless it ends by itself: the server cancelled it on shutting down
    with server.live.open() as credit:
        try:
            reason, code = await _serve(ws, server, query, credit)
        finally:
            server.metrics.stream_closed(_fields(query, client, credit.frames, time.monotonic() - started, reason,
                                                 code))


def _fields(query: StreamQuery | None, client: str, frames: int, seconds: float, reason: str,
            code: int | None) -> dict:
    """What a stream's log line says, in order."""
    about = {} if query is None else {"seed": query.seed, "x": query.x, "tile": query.tile, "format": query.format,
                                      "frames": frames, "columns": frames * query.tile, "batch": query.batch}
    return {**about, "duration_s": round(seconds, 3), "close": reason, "code": code, "client": client}


async def _serve(ws: WebSocket, server: Server, query: StreamQuery, credit: Credit) -> tuple[str, int | None]:
    """The stream's hello and tasks; returns why it ended (``metrics.CLOSE_REASONS``) and its close code."""
    await ws.send_text(json.dumps({"type": "hello", "size": server.G.size, "seed": query.seed, "x": query.x,
                                   "tile": query.tile, "format": query.format, "batch": query.batch,
                                   "max_credit": MAX_CREDIT,
                                   "header_bytes": HEADER.size}))
    tasks = [asyncio.create_task(_read(ws, credit)), asyncio.create_task(_write(ws, credit, server, query)),
             asyncio.create_task(_close_when_idle(credit, server.stream_idle_s))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the server shuts down and cancels this handler
        for task in tasks:
            task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, ProtocolError):
            await close_with_error(ws, outcome.code, outcome.reason)
            return _CODE_REASONS.get(outcome.code, "protocol"), outcome.code
        if isinstance(outcome, Exception) and not isinstance(outcome, (WebSocketDisconnect, OSError)):
            log.exception("stream failed", exc_info=outcome)
            await close_with_error(ws, CLOSE_INTERNAL, f"the generator failed: {outcome}")
            return "error", CLOSE_INTERNAL
    return "client", outcomes[0] if isinstance(outcomes[0], int) else None


async def _read(ws: WebSocket, credit: Credit) -> int | None:
    """Credits in until the client leaves (returns its close code) or breaks the protocol."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return message.get("code")
        if message.get("bytes") is not None:
            raise ProtocolError(CLOSE_UNSUPPORTED, 'binary messages are not accepted; send text {"credit": n}')
        credit.grant(parse_credit(message.get("text") or "", credit.unspent))


async def _write(ws: WebSocket, credit: Credit, server: Server, query: StreamQuery) -> None:
    # Each credit starts one message's frames (query.batch consecutive tiles); up to PIPELINE tiles of
    # one stream, or two messages, are computed at once (their spans may share a batch) and sent
    # strictly in order. Once the credit is stopped, what was started is sent, then the stream ends
    # (CLOSE_RECONNECT).
    k = query.batch
    most = max(PIPELINE, 2 * k)  # tiles in flight
    inflight: deque[tuple[list[asyncio.Task], float]] = deque()  # each message's frames and when it was started
    seq, column = 0, query.x
    tiles = query.tile / server.G.size
    try:
        while True:
            while (len(inflight) + 1) * k <= most and (credit.unspent > 0 or not inflight):
                if not await credit.take():
                    break
                ahead = len(inflight) * k
                inflight.append(([asyncio.create_task(_frame(server, query, seq + i, column + i * query.tile, ahead + i))
                                  for i in range(k)], time.monotonic()))
                seq += k
                column += k * query.tile
            if not inflight:
                raise ProtocolError(CLOSE_RECONNECT, f"the server is restarting; reconnect to resume at column {column}")
            frames = [await frame for frame in inflight[0][0]]
            _, started = inflight.popleft()
            await ws.send_bytes(frames[0] if k == 1 else batch_message(frames))
            credit.sent(k)
            for _ in frames:
                server.metrics.frame_sent(query.format, tiles, time.monotonic() - started)
    finally:
        for frames, _ in inflight:
            for frame in frames:
                frame.cancel()


async def _close_when_idle(credit: Credit, idle_s: float) -> None:
    """Ends the stream (``ProtocolError``, close code ``CLOSE_IDLE``) once nothing has been owed for ``idle_s``."""
    while True:
        left = idle_s if credit.idle_since is None else credit.idle_since + idle_s - time.monotonic()
        if left <= 0:
            raise ProtocolError(CLOSE_IDLE, f"idle: no frame asked for in {idle_s:g} s; reconnect to go on")
        await asyncio.sleep(left)


async def _frame(server: Server, query: StreamQuery, seq: int, column: int, rank: int) -> bytes:
    """One frame: its spans from the batcher (``rank``: how many of this stream's tiles come before it), then
    stitched, encoded and framed by the server's encoder."""
    pieces, parts = await server.batcher.tile_parts(query.seed, column, query.tile, rank)
    return await server.frames.frame(functools.partial(stitch, server.G.size, pieces, parts, query.tile),
                                     query.format, frame_header(seq % 2 ** 32, column, query.tile, query.format))
