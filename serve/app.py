"""The web app of ``soat serve``: the viewer, model info, PNG column ranges and the tile stream.

Routes:
    ``GET /``                                 the viewer (``static/index.html``).
    ``GET /api/info[?seed=S&x=X[&tile=T]]``   the model's name (never its path or URL) and size, device,
                                              dtype, version, limits, counters, the batch policy's measured
                                              times, the columns/s generated (all clients) and the first
                                              tile's ETA: of a stream opened now at S, X (the tile there,
                                              if queued, by its place in the queue), else at a new place.
    ``GET /api/panorama.png?seed=S&x=X&w=W``  columns ``[X, X + W)`` of panorama S (W <= 8192),
                                              pixel for pixel ``to_uint8(G.panorama_columns(S, X, W))``.
    ``WS  /api/stream?seed=S&x=X[&tile=T][&format=jpeg|png|webp][&batch=K]``  consecutive tiles, K to a
                                              message (``protocol``).
    ``GET /api/route?seed=S[&exclude=NAMES]`` where to open seed S's stream directly (only with a
                                              ``router``, as under Ray: ``direct``): ``{"seed": S, "replicas":
                                              [{"replica": NAME, "url": URL}, ...]}``, best first, or 503 if
                                              no replica takes direct streams.
    ``GET /metrics``                          Prometheus metrics (``metrics``).
Malformed or out-of-range queries get a 400 with ``{"error": message}``; a range request beyond the
limits below gets a 503 with ``Retry-After``.

Every generator call runs on one worker thread, so the event loop stays responsive and
the model is never entered twice at once. Streams go through the ``SpanBatcher``; tiles are
stitched and encoded by a pool of ``encoders`` threads, JPEG tiles on the GPU instead where nvJPEG
runs (``encoders.frame_encoder``: ``jpeg_encoder``).

PNG ranges are computed span by span (each span alone, as ``panorama_columns`` does, so the
pixels are exact) and take turns with the stream batches on the worker (``batcher``): a range
span, then a stream batch, while both wait, so a range completes while streams are busy and
streams go on while a range is computed. Range requests take their turns first come, first
served. A range request is admitted only while fewer than ``max_ranges`` are open (and fewer than
``max_ranges_per_client`` from its client address); otherwise it gets a 503 with
``Retry-After`` at once. A request whose client disconnects is cancelled after the span
in progress: abandoned requests cost no more work. Streams are admitted the same way
(``max_streams``, ``max_streams_per_client``; a refused one is closed with 1013) and a
stream that asks for no frame for ``stream_idle_s`` is closed, so one client holding idle
streams cannot lock the others out. Requests whose Host or Origin names another site get
a 403 (``guard``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ..errors import SoatError
from ..runtime.checks import check_float, check_int, check_truncation
from ..runtime.endless import SpanKey, column_pieces, spans, stitch
from ..version import __version__
from .batcher import TARGET_BATCH_S, SpanBatcher, SpanSource
from .encoders import frame_encoder
from .guard import AllowedHosts, HostGuard
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (CLOSE_BUSY, CLOSE_POLICY, FORMATS, MAX_BATCH, MAX_CREDIT, MAX_TILE, MAX_WIDTH, encode_image,
                       parse_panorama_query, parse_route_query, parse_stream_query)
from .stream import LiveStreams, refuse, serve_stream

if TYPE_CHECKING:
    from ..runtime.generator import Generator
    from .direct import Router

STATIC = Path(__file__).parent / "static"
MAX_WINDOW_S = 1.0  # the longest batching window (a longer one only delays every stream)
STREAMS_PER_CLIENT = 16  # default max_streams_per_client: a quarter of the default max_streams
STREAM_IDLE_S = 60.0  # default stream_idle_s
MIN_IDLE_S = 0.01  # the shortest idle timeout of a stream


class Server:
    """What the routes share: the generator, its worker thread, the batcher, the stream and range gates."""

    def __init__(self, G: Generator, truncation: float, max_batch: int, window_s: float, max_streams: int,
                 encoders: int, max_ranges: int, max_ranges_per_client: int, span_source: SpanSource = spans,
                 max_streams_per_client: int = STREAMS_PER_CLIENT, stream_idle_s: float = STREAM_IDLE_S,
                 target_batch_s: float = TARGET_BATCH_S, jpeg_encoder: str = "auto"):
        self.G = G
        self.truncation = truncation
        self.streams = Admission(max_streams, max_streams_per_client, "the server has {n} streams open; try later",
                                 "this client has {n} streams open, the most one client may hold; close one first")
        self.stream_idle_s = stream_idle_s
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="soat-generator")
        self.encoder = ThreadPoolExecutor(encoders, thread_name_prefix="soat-encode")
        self.encoders = encoders
        self.frames = frame_encoder(jpeg_encoder, G.device, self.encoder)
        self.live = LiveStreams()
        self.metrics = ServerMetrics(G.device, lambda: (self.streams.total, self.batcher.pending))
        self.batcher = SpanBatcher(G, self.worker, truncation, max_batch, window_s, target_batch_s,
                                   span_source=span_source, on_batch=self.metrics.batch_done)
        self.ranges = Admission(max_ranges, max_ranges_per_client,
                                "the server is computing {n} ranges; try again in a moment",
                                "{n} ranges of this client are still being computed; wait for them")

    async def on_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def close(self) -> None:
        self.frames.close()
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.encoder.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()


class Admission:
    """Requests of one kind open at once: at most ``max_open`` in all and ``max_per_client`` per client
    address; ``busy`` and ``client_busy`` say why one is refused (``{n}``: the limit)."""

    def __init__(self, max_open: int, max_per_client: int, busy: str, client_busy: str):
        self.max_open = max_open
        self.max_per_client = max_per_client
        self.busy, self.client_busy = busy, client_busy
        self.open: dict[str, int] = {}

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def refusal(self, client: str) -> str | None:
        """Why a new request from ``client`` is refused now, or None."""
        if self.total >= self.max_open:
            return self.busy.format(n=self.max_open)
        if self.open.get(client, 0) >= self.max_per_client:
            return self.client_busy.format(n=self.max_per_client)
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
            await asyncio.wait([task])  # a task is cancelled only once it has run to its end
    return None if task.cancelled() else task.result()


def check_settings(truncation: float, max_batch: int, window_s: float, max_streams: int,
                   max_streams_per_client: int, stream_idle_s: float, encoders: int,
                   target_batch_s: float = TARGET_BATCH_S) -> float:
    """The server's settings checked as the Python API checks its arguments; returns the truncation."""
    for name, value, lo in (("max_batch", max_batch, 1), ("max_streams", max_streams, 1),
                            ("max_streams_per_client", max_streams_per_client, 1), ("encoders", encoders, 0)):
        check_int(value, name, lo)
    check_float(window_s, "window_s", 0, MAX_WINDOW_S)
    check_float(target_batch_s, "target_batch_s", 0)
    check_float(stream_idle_s, "stream_idle_s", MIN_IDLE_S)
    return check_truncation(truncation)


def model_name(source: str) -> str:
    """What ``/api/info`` calls the model: a registry name or ``random:SEED`` as given, else the last part of
    its path or URL path, never a folder, a host, a query (tokens) or credentials."""
    path = urlsplit(source).path if "://" in source else source
    name = os.path.basename(os.path.normpath(path)) if path else ""
    return name if name not in ("", ".", "..") else "model"


def create_app(G: Generator, truncation: float = 0.7, max_batch: int = 16, window_s: float = 0.004,
               max_streams: int = 64, encoders: int | None = None, max_ranges: int = 16,
               max_ranges_per_client: int = 4, span_source: SpanSource = spans,
               max_streams_per_client: int = STREAMS_PER_CLIENT, stream_idle_s: float = STREAM_IDLE_S,
               host: str = "127.0.0.1", allow_origin: Sequence[str] = (),
               target_batch_s: float = TARGET_BATCH_S, jpeg_encoder: str = "auto",
               router: Router | None = None) -> Starlette:
    """The Starlette app serving generator ``G`` (see the module docstring for the routes).

    ``encoders``: threads encoding tiles (default: the CPU count, at most 8). ``max_ranges``,
    ``max_ranges_per_client``: PNG range requests open at once, in all and per client address;
    ``max_streams``, ``max_streams_per_client``: streams likewise; ``stream_idle_s``: a stream that asks
    for no frame for this long is closed. ``host``: the address the server listens on, and
    ``allow_origin``: more host names (or origins; ``*``: any), which the Host and Origin headers of
    every request must name (``guard``). ``span_source``: what computes the streams' span batches
    (``SpanBatcher``; PNG ranges always compute each span alone). ``max_batch``, ``window_s`` and
    ``target_batch_s`` set the batch policy (``batcher.BatchPolicy``): a batch predicted to take at most
    ``target_batch_s`` takes every waiting span (up to ``max_batch``), a longer one is split where that
    costs little more per span. ``jpeg_encoder``: auto, libjpeg-turbo or nvjpeg (``encoders``). ``router``:
    answers ``/api/route`` (``direct``; without it the route is absent).

    ``app.state.drain(timeout_s, abandon)``: stop the streams (``stream.LiveStreams.drain``)."""
    truncation = check_settings(truncation, max_batch, window_s, max_streams, max_streams_per_client, stream_idle_s,
                                encoders or 0, target_batch_s)
    encoders = encoders or max(1, min(8, os.cpu_count() or 1))
    server = Server(G, truncation, max_batch, window_s, max_streams, encoders, max_ranges, max_ranges_per_client,
                    span_source, max_streams_per_client, stream_idle_s, target_batch_s, jpeg_encoder)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def info(request: Request) -> Response:
        batcher = server.batcher
        if "seed" in request.query_params:
            try:
                q = parse_stream_query(request.query_params, G.size)
            except SoatError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            eta = batcher.tile_eta_s(q.seed, q.x, q.tile)
        else:
            eta = batcher.first_tile_eta_s()
        batch_s = batcher.batch_s
        return JSONResponse({
            "version": __version__, "size": G.size, "channel_multiplier": G.config.channel_multiplier,
            "backend": G.backend.name, "device": str(G.device), "dtype": str(G.dtype).replace("torch.", ""),
            "model": model_name(G.source), "truncation": truncation, "max_width": MAX_WIDTH, "max_tile": MAX_TILE,
            "max_credit": MAX_CREDIT, "max_batch_frames": MAX_BATCH, "direct_route": router is not None,
            "formats": list(FORMATS), "streams": server.streams.total,
            "max_streams": server.streams.max_open, "max_streams_per_client": server.streams.max_per_client,
            "stream_idle_s": server.stream_idle_s, "max_batch": batcher.max_batch, "encoders": server.encoders,
            "jpeg_encoder": server.frames.name,
            "pending_spans": batcher.pending, "cached_spans": batcher.cached,
            "open_ranges": server.ranges.total, "max_ranges": server.ranges.max_open,
            "batch_size": batcher.batch_size, "batch_ms": None if batch_s is None else round(1000 * batch_s, 2),
            "first_tile_eta_s": None if eta is None else round(eta, 2),
            "generated_columns_per_s": round(batcher.columns_per_s(), 1),
            **batcher.stats,
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
        parts = await server.batcher.alone([SpanKey(q.seed, p.index, truncation) for p in pieces])
        loop = asyncio.get_running_loop()
        png = await loop.run_in_executor(server.encoder, encode_image, stitch(G.size, pieces, parts, q.w), "png")
        return Response(png, media_type="image/png")

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        client = ws.client.host if ws.client else "?"
        try:
            query = parse_stream_query(ws.query_params, G.size)
        except SoatError as exc:
            await refuse(ws, server, CLOSE_POLICY, str(exc), client)
            return
        refusal = server.streams.refusal(client)
        if refusal is not None:
            await refuse(ws, server, CLOSE_BUSY, refusal, client, query)
            return
        with server.streams.admitted(client):
            await serve_stream(ws, server, query, client)

    async def metrics(request: Request) -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE)

    async def route(request: Request) -> Response:
        try:
            q = parse_route_query(request.query_params)
        except SoatError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        ranked = await router(q.seed, q.exclude)
        if not ranked:
            return JSONResponse({"error": "no replica takes direct streams now; stream through this address"},
                                status_code=503)
        return JSONResponse({"seed": q.seed, "replicas": [{"replica": name, "url": url} for name, url in ranked]})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if truncation != 1:
            await server.on_worker(G.mean_styles)  # sigma_bar once, before the first request
        await server.batcher.warm_up()  # CUDA graphs captured; a batch timed for /api/info's ETA
        refresher = asyncio.create_task(server.metrics.keep_fresh())
        yield
        refresher.cancel()
        server.close()

    routes = [Route("/", index), Route("/api/info", info), Route("/api/panorama.png", panorama_png),
              WebSocketRoute("/api/stream", stream), Route("/metrics", metrics),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    if router is not None:
        routes.append(Route("/api/route", route))
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(HostGuard, hosts=AllowedHosts(host, allow_origin))])
    app.state.drain = server.live.drain
    return app


def uvicorn_server(app: Starlette, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info",
                   lifespan: str = "on"):
    """A ``uvicorn.Server`` for ``app`` (``.run()`` blocks; set ``.should_exit`` to stop it); ``lifespan="off"``
    where the app's lifespan runs elsewhere (a replica's direct listener)."""
    import uvicorn
    # no permessage-deflate: frames are JPEG/PNG/WebP already, and zlib would run on the event loop
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="websockets-sansio",
                            ws_per_message_deflate=False, lifespan=lifespan)
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
