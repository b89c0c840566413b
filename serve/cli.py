"""``soat serve``: load a generator and serve its endless panorama (viewer at ``/``).

``--ray`` runs the same app as a Ray Serve deployment (``ray_app``, the ``ray`` extra); Ray is
imported only then.
"""

from __future__ import annotations

import argparse
import sys

from ..runtime.load import BACKENDS


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object; ``run`` executes it."""
    p = sub.add_parser("serve", help="serve the endless panorama to a browser (needs the serve extra)",
                       description="Serve the endless panorama: viewer at /, PNG ranges at /api/panorama.png, "
                                   "a tile stream at /api/stream.")
    p.add_argument("--checkpoint", default="random",
                   help="checkpoint, export folder or random[:SEED] (default: the embedded random model)")
    p.add_argument("--size", type=int, default=None, help="resolution of the random model (default 256)")
    p.add_argument("--channel-multiplier", type=int, default=None, help="channel multiplier of the random model")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="torch, fast, auto (fast for fp16/bf16, else torch), onnxruntime or tensorrt")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    p.add_argument("--truncation", type=float, default=0.7, help="psi of the served panoramas (default 0.7)")
    p.add_argument("--max-batch", type=int, default=16, help="most spans in one generator call (default 16)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
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
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; 2 on a usage error."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"soat serve needs the serve extra ({exc.name} is missing): pip install 'soat[serve]'", file=sys.stderr)
        return 2
    from ..errors import SoatError
    from .replica import ReplicaOptions

    if args.max_batch < 1:
        print(f"--max-batch={args.max_batch} must be >= 1", file=sys.stderr)
        return 2
    try:
        options = ReplicaOptions.from_args(args)
        scale = _scale(args)
        if args.ray:
            return _run_ray(options, args, scale)
        G = options.load()
    except SoatError as exc:
        print(f"soat serve: {exc}", file=sys.stderr)
        return 2
    from .app import uvicorn_server
    from .replica import local_identity
    print(f"soat serve: {G!r} at http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn_server(options.app(G, local_identity()), args.host, args.port).run()
    return 0


def _scale(args: argparse.Namespace) -> tuple[int | None, tuple[int, int] | None, float | None]:
    """``(replicas, (min, max) or None, gpus_per_replica)`` from the Ray flags, checked."""
    from ..errors import SoatError
    if not args.ray:
        for flag in ("replicas", "autoscale", "gpus_per_replica"):
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
        print(f"soat serve --ray needs the ray extra ({exc.name} is missing): pip install 'soat[ray]'",
              file=sys.stderr)
        return 2
    serve_forever(options, args.host, args.port, *scale)  # SoatError: caught in run()
    return 0
