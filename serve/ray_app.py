"""``soat serve`` on Ray Serve: replicas on every GPU (or CPU) of a Ray cluster behind one address.

Each replica is a ``PanoramaReplica`` actor: it loads the generator once
(``ReplicaOptions.load``: checkpoint, export folder or random model, any backend), serves
``create_app`` (viewer, ``/api/info``, ``/api/panorama.png``, ``/api/stream``) with its own span
batcher, plus ``/api/health`` and ``/api/ready`` (``replica``). Ray Serve's proxies route every
HTTP request to any replica and keep each WebSocket on the replica that accepted it.

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
  numbers restart at 0 on the new connection.
- Graceful drain (``serve shutdown``, a redeploy, downscaling): Serve stops routing to the
  replica, lets in-flight HTTP requests finish, and keeps it up for up to
  ``graceful_shutdown_timeout_s`` while streams are open; the streams still open then end as
  above and resume elsewhere. Serve gives user code no drain signal before that point, so
  streams are not told in advance.

Entry points: ``soat serve --ray`` (``serve_forever``), ``serve run soat.serve.ray_app:app``
(defaults: the random model on the CPU), ``serve run soat.serve.ray_app:build_app
checkpoint=PATH device=cuda``, or a Serve config file with
``import_path: soat.serve.ray_app:build_app`` (``serve/serve_config.yaml``).
"""

from __future__ import annotations

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
from .replica import ReplicaApp, ReplicaOptions

APP_NAME = "soat"
HTTP_SLOTS = 64  # concurrent HTTP requests per replica on top of its streams
TARGET_STREAMS = 16  # autoscaling: open streams (plus requests) per replica that Serve aims for


class _ThisReplica:
    """The ingress app Serve gives every replica: the ``ReplicaApp`` that replica's constructor built.

    Serve unpickles the ingress app apart from the deployment instance and runs its lifespan
    right after the constructor; a replica is one actor process, so the constructor leaves
    its app on this class. (Ray's newer late-bound ingress hook does the same, but only
    recent Ray has it.)
    """

    app: ReplicaApp | None = None

    async def __call__(self, scope, receive, send) -> None:
        await _ThisReplica.app(scope, receive, send)


@serve.deployment(name="soat", graceful_shutdown_timeout_s=10, graceful_shutdown_wait_loop_s=1,
                  health_check_period_s=10, health_check_timeout_s=60)
@serve.ingress(_ThisReplica())
class PanoramaReplica:
    """One replica: the generator, loaded once, and its web app."""

    def __init__(self, options: dict):
        options = ReplicaOptions.from_mapping(options)
        self.web = _ThisReplica.app = options.app(options.load(), ray_identity())  # not `app`: Serve's name

    async def check_health(self) -> None:
        """Serve's health check: the replica computes a column (raises RuntimeError if not)."""
        await self.web.probe()


def ray_identity() -> dict:
    """How a replica names itself: its Serve actor name (for ``ray.get_actor(name, namespace="serve")``)."""
    context = ray.get_runtime_context()
    return {"replica": context.get_actor_name(), "replica_id": serve.get_replica_context().replica_tag,
            "node_id": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def application(options: ReplicaOptions, replicas: int | None = None, autoscale: tuple[int, int] | None = None,
                gpus_per_replica: float = 0.0) -> Application:
    """The Serve application: ``replicas`` fixed replicas or ``autoscale = (min, max)``, each on
    ``gpus_per_replica`` GPUs (fractions share a GPU) and one CPU. Neither count: one replica,
    or what a Serve config file's ``deployments`` section says."""
    settings: dict = {"max_ongoing_requests": options.max_streams + HTTP_SLOTS,
                      "ray_actor_options": {"num_cpus": 1, "num_gpus": gpus_per_replica}}
    if autoscale is not None:
        settings["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                          "target_ongoing_requests": TARGET_STREAMS}
    elif replicas is not None:
        settings["num_replicas"] = replicas
    return PanoramaReplica.options(**settings).bind(dataclasses.asdict(options))


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
