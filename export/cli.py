"""``soat export --checkpoint MODEL -o DIR [--format onnx|aoti] [--device cpu|cuda] [--dtype fp32|fp16|bf16]
[--opset N] [--workers N] [--force]`` (wired into ``soat/cli.py``)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from ..errors import SoatError
from ..options import add_checkpoint, add_force, add_layout, check_checkpoint, check_output_folder
from ..runtime.capabilities import AOTI_FORMAT, ONNX_FORMAT, PRECISION_NAMES, export_precisions
from ..runtime.manifest import MANIFEST
from .aoti_export import export_aoti
from .onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("export", help="write per-layer ONNX graphs or AOTInductor packages and a manifest",
                              description="Export a generator to per-layer graphs (feature I/O), the mapping "
                                          "and affine graphs, the fixed noise and manifest.json: ONNX (load with "
                                          "soat.load(DIR, backend='onnxruntime')) or AOTInductor packages (--format "
                                          "aoti: soat.load(DIR, backend='aoti') or the C++ libsoat).")
    add_checkpoint(p)
    p.add_argument("-o", "--output", "--out", dest="out", required=True, metavar="DIR",
                   help="export folder (written under a temporary name, then renamed; an existing export is "
                        "replaced only with --force)")
    p.add_argument("--format", choices=[ONNX_FORMAT, AOTI_FORMAT], default=ONNX_FORMAT,
                   help="onnx (default) or aoti (torch.export + AOTInductor, one .pt2 per graph)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="aoti: the device the packages are compiled for (default cpu)")
    p.add_argument("--dtype", choices=PRECISION_NAMES, default="fp32",
                   help=f"precision of weights and graph I/O (onnx: {' or '.join(export_precisions(ONNX_FORMAT))})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="aoti: graphs compiled at once, each in its own process (default: up to 4)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    add_layout(p)
    add_force(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``soat export``; prints the manifest path. ``SoatError`` propagates to the CLI's handler."""
    check_checkpoint(args.checkpoint)
    check_output_folder(args.out, args.force, [MANIFEST])
    if args.workers is not None and args.format != "aoti":
        raise SoatError("--workers is for --format aoti (an ONNX export traces its graphs in one process)")
    with terminated_as_exit():
        path = _export(args)
    print(path)
    return 0


def _export(args: argparse.Namespace) -> str:
    if args.format == AOTI_FORMAT:
        return export_aoti(args.checkpoint, args.out, dtype=args.dtype, device=args.device,
                           progress=not args.no_progress, size=args.size, channel_multiplier=args.channel_multiplier,
                           workers=args.workers)
    return export(args.checkpoint, args.out, dtype=args.dtype, opset=args.opset, progress=not args.no_progress,
                  size=args.size, channel_multiplier=args.channel_multiplier)


@contextlib.contextmanager
def terminated_as_exit():
    """SIGTERM ends the block as Ctrl-C does, through every ``finally``: the compile workers are killed and the
    temporary folder removed (Python's default dies at once and leaves both). Exit status 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
