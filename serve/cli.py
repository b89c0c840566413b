"""``soat serve``: load a generator and serve its endless panorama (viewer at ``/``)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object; ``run`` executes it."""
    p = sub.add_parser("serve", help="serve the endless panorama to a browser (needs the serve extra)",
                       description="Serve the endless panorama: viewer at /, PNG ranges at /api/panorama.png, "
                                   "a tile stream at /api/stream.")
    p.add_argument("--checkpoint", default="random",
                   help="checkpoint, export folder or random[:SEED] (default: the embedded random model)")
    p.add_argument("--size", type=int, default=None, help="resolution of the random model (default 256)")
    p.add_argument("--channel-multiplier", type=int, default=None, help="channel multiplier of the random model")
    p.add_argument("--backend", default="torch", help="torch, onnxruntime or tensorrt")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    p.add_argument("--truncation", type=float, default=0.7, help="psi of the served panoramas (default 0.7)")
    p.add_argument("--max-batch", type=int, default=16, help="most spans in one generator call (default 16)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
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
    from ..runtime.errors import SoatError
    from ..runtime.load import load
    from .app import create_app, uvicorn_server

    if args.max_batch < 1:
        print(f"--max-batch={args.max_batch} must be >= 1", file=sys.stderr)
        return 2
    try:
        G = load(args.checkpoint, backend=args.backend, device=args.device, dtype=args.dtype, size=args.size,
                 channel_multiplier=args.channel_multiplier)
    except SoatError as exc:
        print(f"soat serve: {exc}", file=sys.stderr)
        return 2
    print(f"soat serve: {G!r} at http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn_server(create_app(G, args.truncation, args.max_batch), args.host, args.port).run()
    return 0
