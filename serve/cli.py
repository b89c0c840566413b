"""``soat serve``: load a generator and serve its endless panorama (viewer at ``/``).

``--ray`` runs the same app as a Ray Serve deployment (``ray_app``, the ``ray`` extra); Ray is
imported only then.

Stopping: SIGTERM (or Ctrl-C) drains. The server stops accepting connections, answers
``/api/ready`` with 503, lets every stream send the frames it has started and closes it with
1012 (the viewer reconnects and resumes at its column), waits up to ``--drain-s`` for that, gives
connections still open ``SHUTDOWN_GRACE_S`` more, and exits with status 0 (a generator batch in
progress finishes first). With ``--workers N`` the parent passes SIGTERM on to every worker, each
drains, and a worker still running ``SHUTDOWN_GRACE_S`` after the drain time is killed.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from ..errors import SoatError, install_hint, print_error
from ..options import BACKEND_HELP, add_dtype, add_layout, finite_float, number
from ..runtime.capabilities import AUTO, BACKEND_CHOICES

if TYPE_CHECKING:
    from ..runtime.generator import Generator
    from .replica import ReplicaOptions

DRAIN_S = 10.0  # default --drain-s
MAX_DRAIN_S = 600.0
SHUTDOWN_GRACE_S = 5.0  # after the drain: connections still open get this long before they are cut


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object; ``run`` executes it."""
    p = sub.add_parser("serve", help="serve the endless panorama to a browser (needs the serve extra)",
                       description="Serve the endless panorama: viewer at /, PNG ranges at /api/panorama.png, "
                                   "a tile stream at /api/stream.")
    p.add_argument("--checkpoint", default="random",
                   help="checkpoint, export folder or random[:SEED] (default: the embedded random model)")
    add_layout(p)
    p.add_argument("--backend", default=AUTO, choices=BACKEND_CHOICES, help=BACKEND_HELP)
    # not checked against this machine's GPUs: with --ray the replicas may run on other nodes' GPUs
    # (soat.load checks the device where the model loads)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_dtype(p)
    p.add_argument("--truncation", type=finite_float, default=0.7, help="psi of the served panoramas (default 0.7)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="most spans in one generator call (default 64 on CUDA, else 16)")
    p.add_argument("--encoders", type=int, default=0,
                   help="threads encoding tiles per process (default: the CPU count, at most 8)")
    p.add_argument("--jpeg-encoder", default="auto",  # checked with the other options (encoders.check_jpeg_encoder)
                   help="who encodes JPEG tiles: nvjpeg on the generator's GPU (needs torchvision), libjpeg-turbo "
                        "on the encoder threads; auto (default): nvjpeg where it runs, else libjpeg-turbo")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own copy of the model on --device "
                        "(default 1; more when one Python process cannot feed the GPU)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--allow-origin", action="append", default=None, metavar="NAME",
                   help="also answer requests whose Host or Origin header names NAME: a host name or an origin "
                        "such as https://viewer.example.com (repeatable; * answers any). Without it only --host, "
                        "localhost and loopback addresses are answered (with --host 0.0.0.0 also any IP address "
                        "and this machine's name); other sites' pages get 403")
    p.add_argument("--max-streams", type=int, default=None,
                   help="streams one server process holds open (default 64); more are refused with code 1013")
    p.add_argument("--max-streams-per-client", type=int, default=None,
                   help="streams one client address may hold open (default 16; behind a reverse proxy every "
                        "client has its address); a stream that asks for no frame for 60 s is closed")
    p.add_argument("--port", type=int, default=8765, help="port, 0 to 65535 (0: any free port; default 8765)")
    p.add_argument("--drain-s", type=number(float, 0, MAX_DRAIN_S), default=DRAIN_S,
                   help=f"on SIGTERM or Ctrl-C, how long open streams may take to send the frames they started "
                        f"before they are closed (code 1012: reconnect) and the server exits (default {DRAIN_S:g})")
    ray = p.add_argument_group("scale-out on Ray Serve (needs the ray extra)")
    ray.add_argument("--ray", action="store_true",
                     help="deploy on the Ray cluster of RAY_ADDRESS or `ray start` (else a local Ray instance)")
    count = ray.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=None,
                       help="fixed number of replicas (default: one per GPU with --device cuda, else 1)")
    count.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                       help="let Serve scale between MIN and MAX replicas by open streams and requests")
    ray.add_argument("--gpus-per-replica", type=float, default=None,
                     help="GPUs per replica; fractions share a GPU (default 1 with --device cuda, else 0)")
    ray.add_argument("--direct-ports", default=None, metavar="off|auto|LO-HI",
                     help="each replica also takes streams on a port of its own, on --host (its node's address "
                          "with 0.0.0.0), so that frames bypass Serve's proxy: auto any free port, LO-HI the first "
                          "free one of that range (for a firewall), off none. Clients learn the port from "
                          "/api/route?seed=S. Default: auto; off with --autoscale (Serve's autoscaler does not see "
                          "direct streams)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted. A usage error (a busy port, before any model loads) raises
    ``SoatError``, which ``soat.cli.main`` reports as every command's: ``soat: error: ...``, exit status 2."""
    try:
        import prometheus_client  # noqa: F401
        import simplejpeg  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SoatError(f"soat serve needs the serve extra ({exc.name} is missing): {install_hint('serve')}") from None
    from .replica import ReplicaOptions

    if args.max_batch is None:
        args.max_batch = 64 if str(args.device).startswith("cuda") else 16
    for flag, lo in (("max_batch", 1), ("encoders", 0), ("workers", 1)):
        if getattr(args, flag) < lo:
            raise SoatError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= {lo}")
    scale = _scale(args)
    options = ReplicaOptions.from_args(args)
    if args.ray:
        if args.workers != 1:
            raise SoatError("--workers is for plain soat serve; with --ray use --replicas")
        return _run_ray(options, args, scale)
    sock = listen_socket(args.host, args.port, reuse_port=args.workers > 1)
    if args.workers > 1:
        return _run_workers(options, args.host, sock, args.workers, args.drain_s)
    G = options.load()
    serve_on(options, G, sock, f"soat serve: {G!r}", drain_s=args.drain_s)
    return 0


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), or a SoatError naming the problem.

    Bound before the model loads, so a busy or invalid port is reported at once."""
    if isinstance(port, bool) or not 0 <= port <= 65535:
        raise SoatError(f"--port={port} is out of range; allowed: 0 <= port <= 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SoatError(f"--host={host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SoatError(f"port {port} on {host} is in use by another program; choose another with --port") from None
        raise SoatError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def serve_on(options: ReplicaOptions, G: Generator, sock: socket.socket, banner: str, on_listening=None,
             drain_s: float = DRAIN_S) -> None:
    """Serve ``G`` on the bound ``sock`` until SIGTERM or Ctrl-C, then drain (module docstring) for up to
    ``drain_s``; once it accepts connections, print ``banner`` and the URL (unless ``banner`` is empty) and
    call ``on_listening``."""
    import uvicorn

    from .app import uvicorn_server
    from .replica import local_identity
    host, port = sock.getsockname()[:2]
    app = options.app(G, local_identity())

    class Announcing(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if not self.should_exit:
                if banner:
                    print(f"{banner} at http://{host}:{port}/", file=sys.stderr, flush=True)
                if on_listening is not None:
                    on_listening()

        async def shutdown(self, sockets=None):
            for listening in self.servers:  # no new connections while the open streams finish
                listening.close()
            left = await app.drain(drain_s, lambda: self.force_exit)  # a second Ctrl-C cuts it short
            if left:
                print(f"soat serve: {left} streams still open after {drain_s:g} s of draining; closing them",
                      file=sys.stderr, flush=True)
            await super().shutdown(sockets)

    _log_streams()
    config = uvicorn_server(app, host, port).config
    config.timeout_graceful_shutdown = SHUTDOWN_GRACE_S
    # uvicorn raises the signal it stopped on again once it is done; after a drain SIGTERM is a clean exit
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        Announcing(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_streams() -> None:
    """Print the server's INFO lines (one per stream, ``metrics``) to stderr as uvicorn prints its own."""
    from uvicorn.logging import DefaultFormatter
    logger = logging.getLogger("soat.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _worker(options, host: str, port: int, ready, drain_s: float) -> None:
    """One of ``--workers``: its own model copy, a socket sharing the port (SO_REUSEPORT). Its error is one line,
    as the parent's."""
    try:
        sock = listen_socket(host, port, reuse_port=True)
        G = options.load()
    except SoatError as exc:
        print_error(exc)
        sys.exit(2)
    serve_on(options, G, sock, "", ready.release, drain_s)  # the parent prints the URL once all are up


def _run_workers(options, host: str, sock: socket.socket, n: int, drain_s: float) -> int:
    import multiprocessing as mp
    import shutil
    import tempfile
    import time

    from .metrics import MULTIPROCESS_DIR
    port = sock.getsockname()[1]  # the parent keeps its bound socket (not listening) so the port stays ours
    # the workers' metrics go to files there, and a scrape of any worker answers for all (metrics)
    os.environ[MULTIPROCESS_DIR] = metrics_dir = tempfile.mkdtemp(prefix="soat-metrics-")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C: pass it on, then wait
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    procs = [ctx.Process(target=_worker, args=(options, host, port, ready, drain_s), daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        up = 0
        while up < n:
            if ready.acquire(timeout=0.5):
                up += 1
            elif any(proc.exitcode is not None for proc in procs):
                raise SoatError("a worker of soat serve failed to start (its error is above)")
        print(f"soat serve: {n} workers, each {options.checkpoint} on {options.device}, at http://{host}:{port}/",
              file=sys.stderr, flush=True)
        while all(proc.is_alive() for proc in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            proc.terminate()  # SIGTERM: each worker drains
        deadline = time.monotonic() + drain_s + SHUTDOWN_GRACE_S
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _scale(args: argparse.Namespace) -> tuple[int | None, tuple[int, int] | None, float | None]:
    """``(replicas, (min, max) or None, gpus_per_replica)`` from the Ray flags, checked; with ``--autoscale`` and no
    ``--direct-ports``, direct streams are off (Serve's autoscaler counts only the streams it routes)."""
    if not args.ray:
        for flag in ("replicas", "autoscale", "gpus_per_replica", "direct_ports"):
            if getattr(args, flag) is not None:
                raise SoatError(f"--{flag.replace('_', '-')} needs --ray")
        return None, None, None
    if args.replicas is not None and args.replicas < 1:
        raise SoatError(f"--replicas={args.replicas} must be >= 1")
    autoscale = None
    if args.autoscale is not None:
        lo, _, hi = args.autoscale.partition(":")
        if not (lo.isdigit() and hi.isdigit() and int(hi) >= max(1, int(lo))):
            raise SoatError(f"--autoscale={args.autoscale!r} must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
        autoscale = int(lo), int(hi)
        if args.direct_ports is None:
            from .direct import DIRECT_OFF
            args.direct_ports = DIRECT_OFF
    gpus = args.gpus_per_replica
    if gpus is not None and gpus < 0:
        raise SoatError(f"--gpus-per-replica={gpus} must be >= 0")
    if gpus and not args.device.startswith("cuda"):
        raise SoatError(f"--gpus-per-replica={gpus} needs --device cuda (the replicas run on --device={args.device})")
    return args.replicas, autoscale, gpus


def _run_ray(options, args: argparse.Namespace, scale) -> int:
    try:
        from .ray_app import serve_forever
    except ImportError as exc:
        raise SoatError(f"soat serve --ray needs the ray extra ({exc.name} is missing): {install_hint('ray')}") \
            from None
    serve_forever(options, args.host, args.port, *scale)  # SoatError: reported by soat.cli.main
    return 0
