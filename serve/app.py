"""The web app of ``soat serve``: the viewer, model info, PNG column ranges and the tile stream.

Routes:
    ``GET /``                                 the viewer (``static/index.html``).
    ``GET /api/info``                         model size, device, dtype, version, limits, counters, the
                                              first tile's ETA and the columns/s generated (all clients).
    ``GET /api/panorama.png?seed=S&x=X&w=W``  columns ``[X, X + W)`` of panorama S (W <= 8192),
                                              pixel for pixel ``to_uint8(G.panorama_columns(S, X, W))``.
    ``WS  /api/stream?seed=S&x=X[&tile=T][&format=jpeg|png|webp]``  consecutive tiles (``protocol``).
Malformed or out-of-range queries get a 400 with ``{"error": message}``; a range request beyond the
limits below gets a 503 with ``Retry-After``.

Every generator call runs on one worker thread, so the event loop stays responsive and
the model is never entered twice at once. Streams go through the ``SpanBatcher``; tiles are
encoded by a pool of ``encoders`` threads (Pillow releases the GIL while it encodes).

PNG ranges are computed span by span (each span alone, as ``panorama_columns`` does, so the
pixels are exact), and only one range span at a time is handed to the worker (requests
take turns, first come first served), so stream batches wait for at most one range span.
A range request is admitted only while fewer than ``max_ranges`` are open (and fewer than
``max_ranges_per_client`` from its client address); otherwise it gets a 503 with
``Retry-After`` at once. A request whose client disconnects is cancelled after the span
in progress: abandoned requests cost no more work.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..errors import SoatError
from ..runtime.endless import SpanKey, check_truncation, column_pieces, span, spans, stitch
from ..runtime.images import to_uint8
from ..version import __version__
from .batcher import SpanBatcher, SpanSource
from .protocol import (CLOSE_BUSY, CLOSE_POLICY, FORMATS, MAX_CREDIT, MAX_TILE, MAX_WIDTH, encode_image,
                       parse_panorama_query, parse_stream_query)
from .stream import close_with_error, serve_stream

if TYPE_CHECKING:
    from ..runtime.generator import Generator

STATIC = Path(__file__).parent / "static"


class Server:
    """What the routes share: the generator, its worker thread, the batcher, the range gate and counters."""

    def __init__(self, G: Generator, truncation: float, max_batch: int, window_s: float, max_streams: int,
                 encoders: int, max_ranges: int, max_ranges_per_client: int, span_source: SpanSource = spans):
        self.G = G
        self.truncation = truncation
        self.max_streams = max_streams
        self.streams = 0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="soat-generator")
        self.encoder = ThreadPoolExecutor(encoders, thread_name_prefix="soat-encode")
        self.encoders = encoders
        self.batcher = SpanBatcher(G, self.worker, truncation, max_batch, window_s, span_source=span_source)
        self.ranges = RangeGate(max_ranges, max_ranges_per_client)

    async def on_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.encoder.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()


class RangeGate:
    """Admission and turns for PNG range requests: bounded in total and per client, one span at a time."""

    def __init__(self, max_open: int, max_per_client: int):
        self.max_open = max_open
        self.max_per_client = max_per_client
        self.open: dict[str, int] = {}
        self._turn: asyncio.Lock | None = None

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def refusal(self, client: str) -> str | None:
        """Why a new request from ``client`` is refused now, or None."""
        if self.total >= self.max_open:
            return f"the server is computing {self.max_open} ranges; try again in a moment"
        if self.open.get(client, 0) >= self.max_per_client:
            return f"{self.max_per_client} ranges of this client are still being computed; wait for them"
        return None

    @contextmanager
    def admitted(self, client: str):
        self.open[client] = self.open.get(client, 0) + 1
        try:
            yield
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]

    async def run(self, server: Server, fn, *args):
        """``fn(*args)`` on the worker when this request's turn comes; a cancelled request gives up its
        turn (or, if its span is being computed, releases the turn when that span is done)."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            future = asyncio.get_running_loop().run_in_executor(server.worker, fn, *args)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                await asyncio.wait([future])  # the worker cannot be interrupted: keep the turn until it is free
                raise


async def disconnected(request: Request) -> None:
    """Returns when the client of ``request`` (a GET, whose body is read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work) -> Response | None:
    """Await coroutine ``work``; cancel it and return None if the client leaves first."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        return None
    return task.result()


def exact_span(G: Generator, key: SpanKey) -> np.ndarray:
    """One span's contributed columns computed alone (as ``panorama_columns`` does): ``[R, w, 3]`` uint8."""
    return to_uint8(span(G, key))[0]


def create_app(G: Generator, truncation: float = 0.7, max_batch: int = 16, window_s: float = 0.004,
               max_streams: int = 64, encoders: int | None = None, max_ranges: int = 16,
               max_ranges_per_client: int = 4, span_source: SpanSource = spans) -> Starlette:
    """The Starlette app serving generator ``G`` (see the module docstring for the routes).

    ``encoders``: threads encoding tiles (default: the CPU count, at most 8). ``max_ranges``,
    ``max_ranges_per_client``: PNG range requests open at once, in all and per client address.
    ``span_source``: what computes the streams' span batches (``SpanBatcher``; PNG ranges always
    compute each span alone)."""
    truncation = check_truncation(truncation)
    encoders = encoders or max(1, min(8, os.cpu_count() or 1))
    server = Server(G, truncation, max_batch, window_s, max_streams, encoders, max_ranges, max_ranges_per_client,
                    span_source)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> Response:
        return JSONResponse({
            "version": __version__, "size": G.size, "channel_multiplier": G.config.channel_multiplier,
            "backend": G.backend.name, "device": str(G.device), "dtype": str(G.dtype).replace("torch.", ""),
            "source": G.source, "truncation": truncation, "max_width": MAX_WIDTH, "max_tile": MAX_TILE,
            "max_credit": MAX_CREDIT, "formats": list(FORMATS), "streams": server.streams,
            "max_streams": server.max_streams, "max_batch": server.batcher.max_batch, "encoders": server.encoders,
            "pending_spans": server.batcher.pending, "cached_spans": server.batcher.cached,
            "open_ranges": server.ranges.total, "max_ranges": server.ranges.max_open,
            "batch_ms": None if server.batcher.batch_s is None else round(1000 * server.batcher.batch_s, 2),
            "first_tile_eta_s": server.batcher.first_tile_eta_s(),
            "generated_columns_per_s": round(server.batcher.columns_per_s(), 1),
            **server.batcher.stats,
        })

    async def panorama_png(request: Request) -> Response:
        try:
            q = parse_panorama_query(request.query_params)
        except SoatError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        client = "internal" if request.scope.get("soat.internal") else request.client.host if request.client else "?"
        refusal = server.ranges.refusal(client)
        if refusal is not None:
            return JSONResponse({"error": refusal}, status_code=503, headers={"Retry-After": "1"})
        with server.ranges.admitted(client):
            response = await unless_disconnected(request, _range_png(q))
        return response if response is not None else Response(status_code=499)  # nobody reads it

    async def _range_png(q) -> Response:
        pieces = column_pieces(G.size, q.x, q.w)
        parts = [await server.ranges.run(server, exact_span, G, SpanKey(q.seed, p.index, truncation))
                 for p in pieces]
        loop = asyncio.get_running_loop()
        png = await loop.run_in_executor(server.encoder, encode_image, stitch(G.size, pieces, parts, q.w), "png")
        return Response(png, media_type="image/png")

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        try:
            query = parse_stream_query(ws.query_params, G.size)
        except SoatError as exc:
            await close_with_error(ws, CLOSE_POLICY, str(exc))
            return
        if server.streams >= server.max_streams:
            await close_with_error(ws, CLOSE_BUSY, f"the server has {server.max_streams} streams open; try later")
            return
        server.streams += 1
        try:
            await serve_stream(ws, server, query)
        finally:
            server.streams -= 1

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if truncation != 1:
            await server.on_worker(G.mean_styles)  # sigma_bar once, before the first request
        await server.batcher.warm_up()  # CUDA graphs captured; a batch timed for /api/info's ETA
        yield
        server.close()

    routes = [Route("/", index), Route("/api/info", info), Route("/api/panorama.png", panorama_png),
              WebSocketRoute("/api/stream", stream), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, lifespan=lifespan)


def uvicorn_server(app: Starlette, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` (``.run()`` blocks; set ``.should_exit`` to stop it)."""
    import uvicorn
    # no permessage-deflate: frames are JPEG/PNG/WebP already, and zlib would run on the event loop
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="websockets-sansio",
                            ws_per_message_deflate=False, lifespan="on")
    return uvicorn.Server(config)


@contextmanager
def background_server(app: Starlette, host: str = "127.0.0.1", port: int = 0,
                      timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``app`` from a daemon thread (notebooks, tests); yields the base URL, stops on exit.

    ``port=0`` takes a free port. Raises RuntimeError if the server is not up within ``timeout_s``.
    """
    server = uvicorn_server(app, host, port, log_level="warning")
    thread = threading.Thread(target=server.run, name="soat-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"soat serve did not start on {host}:{port} within {timeout_s:.0f} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
