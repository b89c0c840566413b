"""One serving process, with or without Ray: its options, its generator, and its web app with health routes.

``soat serve`` runs one replica under uvicorn; ``soat serve --ray`` (``ray_app``) runs one per
Ray Serve replica. Both load the generator once with ``ReplicaOptions.load`` and serve
``create_app`` wrapped in ``ReplicaApp``, which adds:

    ``GET /healthz``, ``GET /api/health``  liveness: 200 ``{"status": "ok", "replica": ..., "host": ...,
                         "pid": ...}`` while the event loop answers.
    ``GET /api/ready``   readiness: 200 ``{"ready": true, ...}`` once the replica computes a
                         column (seed 0, column 0) through the generator within
                         ``probe_timeout_s``, else 503 ``{"ready": false, "error": ...}``; 503 too
                         once it drains (``drain``).

and names the replica in an ``x-soat-replica`` header on every HTTP response and WebSocket
handshake, so a client (or a test) can tell which replica served it. Nothing here needs Ray.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Mapping

from starlette.responses import JSONResponse

from ..errors import SoatError
from ..loader import load
from ..runtime.capabilities import AUTO, backend_spec, check_runs, precision
from ..runtime.checks import check_device, check_source
from ..runtime.config import check_layout
from ..runtime.endless import spans
from .app import STREAM_IDLE_S, STREAMS_PER_CLIENT, check_settings, create_app
from .direct import DIRECT_ANY, parse_direct_ports
from .encoders import check_jpeg_encoder

if TYPE_CHECKING:
    from ..runtime.generator import Generator
    from .batcher import SpanSource
    from .direct import Router

REPLICA_HEADER = b"x-soat-replica"
LIVENESS_PATHS = ("/healthz", "/api/health")  # the usual name, and the one Ray deployments were told of
PROBE_TIMEOUT_S = 30.0  # longer queues than this on one replica count as not ready
_PROBE = ("/api/panorama.png", "seed=0&x=0&w=1")  # one column: a cached span after the first probe


@dataclass(frozen=True)
class ReplicaOptions:
    """What every replica loads and serves (``soat.load`` arguments and ``create_app`` settings)."""

    checkpoint: str = "random"  # checkpoint, export folder or random[:SEED]
    backend: str = "auto"  # soat.load's backend: auto or a row of soat.runtime.capabilities.BACKENDS
    device: str = "cpu"
    dtype: str = "fp32"
    size: int | None = None  # random model only (default 256)
    channel_multiplier: int | None = None  # random model only (default 2)
    truncation: float = 0.7
    max_batch: int = 16  # spans in one generator call
    window_s: float = 0.004  # batching window
    max_streams: int = 64  # open streams per replica
    encoders: int = 0  # threads encoding tiles (0: the CPU count, at most 8)
    max_streams_per_client: int = STREAMS_PER_CLIENT  # open streams of one client address
    stream_idle_s: float = STREAM_IDLE_S  # a stream that asks for no frame this long is closed
    host: str = "127.0.0.1"  # the address clients use (soat serve --host): Host and Origin headers must name it
    allow_origin: tuple[str, ...] = ()  # more names (or origins) they may name; "*": any (soat serve --allow-origin)
    jpeg_encoder: str = "auto"  # auto, libjpeg-turbo or nvjpeg (encoders.frame_encoder; soat serve --jpeg-encoder)
    direct_ports: str = DIRECT_ANY  # under Ray: off, auto or LO-HI, where each replica takes streams itself (direct)

    def __post_init__(self):
        """Every value checked when the options are built, as the Python API checks its arguments (the device
        is not looked for here: replicas may run on other machines)."""
        check_source(self.checkpoint, "checkpoint")
        check_device(self.device, here=False)
        dtype = precision(self.dtype).torch_dtype
        if self.backend != AUTO:
            backend_spec(self.backend)
            check_runs(self.backend, dtype)
        check_layout(self.size, self.channel_multiplier)
        check_settings(self.truncation, self.max_batch, self.window_s, self.max_streams, self.max_streams_per_client,
                       self.stream_idle_s, self.encoders)
        check_jpeg_encoder(self.jpeg_encoder)
        parse_direct_ports(self.direct_ports)

    @classmethod
    def from_mapping(cls, args: Mapping[str, object]) -> "ReplicaOptions":
        """From a Serve config's ``args`` or ``serve run ... key=value`` (values may be strings)."""
        allowed = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in args.items():
            if key not in allowed:
                raise SoatError(f"unknown option {key!r}; allowed: {', '.join(allowed)}")
            values[key] = _convert(key, value, allowed[key].default)
        return cls(**values)

    @classmethod
    def from_args(cls, args) -> "ReplicaOptions":
        """From ``soat serve``'s ``argparse.Namespace`` (options it has no flag for keep their defaults)."""
        return cls.from_mapping({f.name: getattr(args, f.name) for f in fields(cls)
                                 if getattr(args, f.name, None) is not None})

    def load(self) -> Generator:
        """The generator, loaded once per replica."""
        return load(self.checkpoint, backend=self.backend, device=self.device, dtype=self.dtype, size=self.size,
                    channel_multiplier=self.channel_multiplier)

    def app(self, G: Generator, replica: Mapping[str, object], span_source: SpanSource = spans,
            router: Router | None = None) -> "ReplicaApp":
        """``create_app(G, ...)`` with the health routes, for the replica described by ``replica`` (``span_source``
        and ``router``: as ``create_app`` takes them)."""
        return ReplicaApp(create_app(G, self.truncation, self.max_batch, self.window_s, self.max_streams,
                                     self.encoders or None, span_source=span_source,
                                     max_streams_per_client=self.max_streams_per_client,
                                     stream_idle_s=self.stream_idle_s, host=self.host,
                                     allow_origin=self.allow_origin, jpeg_encoder=self.jpeg_encoder, router=router),
                          replica)


_KINDS = {str: "a string", int: "an integer", float: "a number", tuple: "names, comma-separated"}


def _convert(name: str, value, default):
    """``value`` as the type of the option's default (sizes, whose default is None, are integers or None;
    a tuple of names may be written as one comma-separated string)."""
    if default is None and value in (None, "", "None"):
        return None
    kind = int if default is None else type(default)
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [None]
        if not all(isinstance(item, str) for item in items):
            raise SoatError(f"{name}={value!r} must be {_KINDS[kind]}")
        return tuple(item.strip() for item in items if item.strip())
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise SoatError(f"{name}={value!r} must be {_KINDS[kind]}") from None


def local_identity() -> dict:
    """How a replica outside Ray names itself: ``host:pid``."""
    host, pid = socket.gethostname(), os.getpid()
    return {"replica": f"{host}:{pid}", "host": host, "pid": pid}


class ReplicaApp:
    """An ASGI app: ``app``'s routes plus ``/healthz`` (``/api/health``) and ``/api/ready``, every response
    naming the replica.

    Args:
        app: the ASGI app of ``create_app`` (lifespan, HTTP and WebSocket pass through).
        replica: what ``/api/health`` reports; ``replica["replica"]`` is the header value.
        probe_timeout_s: how long the readiness probe may wait for the generator.
    """

    def __init__(self, app, replica: Mapping[str, object], probe_timeout_s: float = PROBE_TIMEOUT_S):
        self.app = app
        self.replica = dict(replica)
        self.probe_timeout_s = probe_timeout_s
        self._header = (REPLICA_HEADER, str(self.replica["replica"]).encode())
        self.draining = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan: the generator's warm-up and shutdown
            return
        send = self._named(send)
        if scope["type"] == "http" and scope["path"] in LIVENESS_PATHS:
            await JSONResponse({"status": "ok", **self.replica})(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/api/ready":
            await (await self._ready())(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _named(self, send):
        async def named_send(message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), self._header]}
            await send(message)
        return named_send

    async def probe(self) -> None:
        """Compute one column through the generator; RuntimeError if it fails or takes over ``probe_timeout_s``."""
        try:
            status, body = await asyncio.wait_for(asgi_get(self.app, *_PROBE), self.probe_timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"the generator did not answer within {self.probe_timeout_s:.0f} s") from None
        if status != 200:
            raise RuntimeError(f"the generator failed: HTTP {status} {body[:200].decode(errors='replace')}")

    async def drain(self, timeout_s: float, abandon=lambda: False) -> int:
        """Answer not ready from now on, and stop the streams (``stream.LiveStreams.drain``): each sends the
        frames it started and closes with 1012; returns the streams still open after ``timeout_s``."""
        self.draining = True
        return await self.app.state.drain(timeout_s, abandon)

    async def _ready(self) -> JSONResponse:
        if self.draining:
            return JSONResponse({"ready": False, "error": "draining: the server is shutting down", **self.replica},
                                status_code=503)
        try:
            await self.probe()
        except RuntimeError as exc:
            return JSONResponse({"ready": False, "error": str(exc), **self.replica}, status_code=503)
        return JSONResponse({"ready": True, **self.replica})


async def asgi_get(app, path: str, query: str = "") -> tuple[int, bytes]:
    """``GET path?query`` on an ASGI app in this process: ``(status, body)``."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(),
             "headers": [], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
             "soat.internal": True}  # its own range quota (``create_app``): busy clients do not starve it
    request_sent = False
    status, body = 500, []

    async def receive() -> dict:
        nonlocal request_sent
        if request_sent:
            await asyncio.Future()  # no disconnect: wait until the app is done and cancels this
        request_sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(body)
