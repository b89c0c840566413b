"""``soat serve`` on Ray Serve: replicas on every GPU (or CPU) of a Ray cluster behind one address.

Each replica is a ``PanoramaReplica`` actor: it loads the generator once
(``ReplicaOptions.load``: checkpoint, export folder or random model, any backend), serves
``create_app`` (viewer, ``/api/info``, ``/api/panorama.png``, ``/api/stream``) with its own span
batcher, plus ``/api/health`` and ``/api/ready`` (``replica``). Ray Serve's proxies route every
HTTP request to any replica and keep each WebSocket on the replica that accepted it.

Direct streams (``direct``): once warm, each replica also listens on a port of its own
(``direct_ports``: any free one, a range, or off) and enters its address in the application's
``Directory``, a small detached actor; ``/api/route?seed=S``, through the proxy, ranks the replicas
for S with their addresses. The directory leaves out replicas whose actor is gone (and a replica
leaves it as it shuts down), so soon after a replica dies, no route names it. Serve's autoscaler
counts only the requests Serve routes, not direct streams (``soat serve --autoscale`` leaves them
off unless ``--direct-ports`` is given). Under
Serve's HAProxy ingress (Ray >= 2.55, ``RAY_SERVE_ENABLE_HA_PROXY=1`` where Ray starts) the
cluster's address passes streams through HAProxy instead of the Python proxy; the direct route is
the same.

Routing is safe because the pixels of a column range depend only on (model, seed, range,
truncation): a PNG range is the same from every replica of one deployment (same device
type, dtype and backend), so split ranges fetched from different replicas join exactly.

Failures and shutdown:

- Serve calls ``check_health`` every ``health_check_period_s``: the replica must compute a
  column within ``PROBE_TIMEOUT_S``, else Serve replaces it.
- A replica that dies (crash, node loss, ``ray.kill``) closes its streams: each client sees
  one closed connection and resumes on another replica by reconnecting with
  ``x = last column + 1`` (the first column of its last complete frame plus that frame's
  width; frames are whole WebSocket messages, so nothing is half received). Sequence
  numbers restart at 0 on the new connection. A direct client resumes on the next replica its
  route ranked.
- Graceful drain (``serve shutdown``, a redeploy, downscaling): Serve stops routing to the
  replica, lets in-flight HTTP requests finish, and keeps it up for up to
  ``graceful_shutdown_timeout_s`` while streams are open; the streams still open then end as
  above and resume elsewhere. Serve gives user code no drain signal before that point, so
  streams are not told in advance. Serve does not see direct streams: when it stops the
  replica, the replica leaves the directory, its streams send the frames they started and close
  with 1012 naming the column to resume at, and its listener stops.

Entry points: ``soat serve --ray`` (``serve_forever``), ``serve run soat.serve.ray_app:app``
(defaults: the random model on the CPU), ``serve run soat.serve.ray_app:build_app
checkpoint=PATH device=cuda``, or a Serve config file with
``import_path: soat.serve.ray_app:build_app`` (``serve/serve_config.yaml``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import time

import ray
from ray import serve
from ray.serve import Application

from ..errors import SoatError
from ..runtime.endless import spans
from .batcher import SpanSource
from .direct import AfterStartup, DirectListener, parse_direct_ports, rank
from .guard import ANY_ADDRESS
from .replica import ReplicaApp, ReplicaOptions

APP_NAME = "soat"
HTTP_SLOTS = 64  # concurrent HTTP requests per replica on top of its streams
TARGET_STREAMS = 16  # autoscaling: open streams (plus requests) per replica that Serve aims for
SERVE_NAMESPACE = "serve"  # where Serve names its replica actors
DIRECTORY_NAMESPACE = "soat"
ROUTES_TTL_S = 1.0  # how long a replica answers routes from the addresses it last fetched
DRAIN_S = 5.0  # a stopping replica's direct streams get this long to send the frames they started


@ray.remote(num_cpus=0)
class Directory:
    """Where the replicas of one application take direct streams: replica (actor) name -> base URL."""

    def __init__(self):
        self.urls: dict[str, str] = {}

    def join(self, replica: str, url: str) -> None:
        self.urls[replica] = url

    def leave(self, replica: str) -> None:
        self.urls.pop(replica, None)

    def live(self) -> dict[str, str]:
        """The addresses of replicas whose actor is alive (Ray drops a killed actor's name within moments)."""
        alive = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == SERVE_NAMESPACE}
        self.urls = {name: url for name, url in self.urls.items() if name in alive}
        return dict(self.urls)


def directory_name(app_name: str) -> str:
    return f"soat-directory:{app_name}"


def directory(app_name: str):
    """The application's ``Directory`` actor, made by whichever replica asks first; detached, so that it outlives
    any one replica (``remove_directory`` ends it)."""
    return Directory.options(name=directory_name(app_name), namespace=DIRECTORY_NAMESPACE, lifetime="detached",
                             get_if_exists=True).remote()


def remove_directory(app_name: str) -> None:
    try:
        ray.kill(ray.get_actor(directory_name(app_name), namespace=DIRECTORY_NAMESPACE))
    except ValueError:  # none was made (no replica started)
        pass


class DirectRoutes:
    """One replica's side of direct streams: its listener and place in the directory, and ``/api/route``'s answers
    (``rank`` over the live addresses, fetched at most every ``ROUTES_TTL_S``)."""

    def __init__(self, options: ReplicaOptions, replica: str, app_name: str):
        self.ports = parse_direct_ports(options.direct_ports)
        self.host = options.host
        self.replica, self.app_name = replica, app_name
        self.web: ReplicaApp | None = None  # set once the replica's app exists
        self.listener: DirectListener | None = None
        self.directory = None
        self.urls: dict[str, str] = {}
        self.fetched = -float("inf")
        self.fetching: asyncio.Lock | None = None

    async def started(self) -> None:
        """The replica is warm: listen (unless ``direct_ports`` is off) and enter its address in the directory."""
        self.directory = directory(self.app_name)
        self.fetching = asyncio.Lock()
        if self.ports is None:
            return
        self.listener = await DirectListener.start(self.web, self.host, self.ports)
        await self.directory.join.remote(self.replica, f"http://{advertised(self.host)}:{self.listener.port}")

    async def stopping(self) -> None:
        """Serve stops the replica: leave the directory, let direct streams send what they started, stop listening."""
        if self.listener is None:
            return
        await self.directory.leave.remote(self.replica)
        await self.web.drain(DRAIN_S)
        await self.listener.stop()

    async def __call__(self, seed: int, exclude: tuple[str, ...]) -> list[tuple[str, str]]:
        if self.directory is None:
            return []
        async with self.fetching:
            if time.monotonic() - self.fetched > ROUTES_TTL_S:
                self.urls = await self.directory.live.remote()
                self.fetched = time.monotonic()
        return rank(seed, self.urls, exclude)


def advertised(host: str) -> str:
    """The address a replica listening on ``host`` gives clients: ``host``, or the node's address if it listens on
    every interface."""
    name = ray.util.get_node_ip_address() if host.strip("[]") in ANY_ADDRESS else host
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


class _ThisReplica:
    """The ingress app Serve gives every replica: the app that replica's constructor built (its ``ReplicaApp``,
    which opens its direct port once warm: ``AfterStartup``).

    Serve unpickles the ingress app apart from the deployment instance and runs its lifespan
    right after the constructor; a replica is one actor process, so the constructor leaves
    its app on this class. (Ray's newer late-bound ingress hook does the same, but only
    recent Ray has it.)
    """

    app: AfterStartup | None = None

    async def __call__(self, scope, receive, send) -> None:
        await _ThisReplica.app(scope, receive, send)


@serve.deployment(name="soat", graceful_shutdown_timeout_s=10, graceful_shutdown_wait_loop_s=1,
                  health_check_period_s=10, health_check_timeout_s=60)
@serve.ingress(_ThisReplica())
class PanoramaReplica:
    """One replica: the generator, loaded once, and its web app (``span_source``: what computes its stream
    spans; the benchmark's free one measures the path from replica to client alone)."""

    def __init__(self, options: dict, span_source: SpanSource = spans):
        options = ReplicaOptions.from_mapping(options)
        identity = ray_identity()
        self.direct = DirectRoutes(options, identity["replica"], serve.get_replica_context().app_name)
        self.web = self.direct.web = options.app(options.load(), identity, span_source, self.direct)  # not `app`
        _ThisReplica.app = AfterStartup(self.web, self.direct.started, self.direct.stopping)

    async def check_health(self) -> None:
        """Serve's health check: the replica computes a column (raises RuntimeError if not)."""
        await self.web.probe()


def ray_identity() -> dict:
    """How a replica names itself: its Serve actor name (for ``ray.get_actor(name, namespace="serve")``)."""
    context = ray.get_runtime_context()
    return {"replica": context.get_actor_name(), "replica_id": serve.get_replica_context().replica_tag,
            "node_id": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def application(options: ReplicaOptions, replicas: int | None = None, autoscale: tuple[int, int] | None = None,
                gpus_per_replica: float = 0.0, span_source: SpanSource = spans) -> Application:
    """The Serve application: ``replicas`` fixed replicas or ``autoscale = (min, max)``, each on
    ``gpus_per_replica`` GPUs (fractions share a GPU) and one CPU. Neither count: one replica,
    or what a Serve config file's ``deployments`` section says. ``span_source``: ``PanoramaReplica``'s."""
    settings: dict = {"max_ongoing_requests": options.max_streams + HTTP_SLOTS,
                      "ray_actor_options": {"num_cpus": 1, "num_gpus": gpus_per_replica}}
    if autoscale is not None:
        settings["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                          "target_ongoing_requests": TARGET_STREAMS}
    elif replicas is not None:
        settings["num_replicas"] = replicas
    return PanoramaReplica.options(**settings).bind(dataclasses.asdict(options), span_source)


def build_app(args: dict) -> Application:
    """Serve's application builder: ``args`` are ``ReplicaOptions`` fields (strings are converted)."""
    return application(ReplicaOptions.from_mapping(args))


app = build_app({})


def serve_forever(options: ReplicaOptions, host: str, port: int, replicas: int | None = None,
                  autoscale: tuple[int, int] | None = None, gpus_per_replica: float | None = None) -> None:
    """``soat serve --ray``: deploy on the Ray cluster (``RAY_ADDRESS``, a local ``ray start``, or a new
    local instance) and block; Ctrl-C or SIGTERM deletes the application with Serve's graceful drain.
    Raises SoatError if the replicas fail to start (a bad checkpoint path, device, ...).

    ``gpus_per_replica`` defaults to 1 on CUDA and 0 on the CPU; on CUDA without ``replicas`` or
    ``autoscale`` there is one replica per ``gpus_per_replica`` GPUs of the cluster.
    """
    if gpus_per_replica is None:
        gpus_per_replica = 1.0 if options.device.startswith("cuda") else 0.0
    ray.init()
    if replicas is None and autoscale is None and gpus_per_replica > 0:
        replicas = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_replica))
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(application(options, replicas, autoscale, gpus_per_replica), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:  # a replica's constructor failed: its error is in the log above
        serve.delete(APP_NAME)
        remove_directory(APP_NAME)
        raise SoatError(f"the replicas did not start ({exc}); the replica log above says why") from None
    print(f"soat serve: Ray Serve application {APP_NAME!r} at http://{host}:{port}/", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # docker stop, systemd: drain as on Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        remove_directory(APP_NAME)
