"""``soat export CHECKPOINT -o DIR [--dtype fp32|fp16] [--opset N]`` (wired into ``soat/cli.py``)."""

from __future__ import annotations

import argparse

from ..runtime.manifest import DTYPES
from .onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("export", help="write per-layer ONNX graphs and a manifest to a folder",
                              description="Export a generator to per-layer ONNX graphs (feature I/O), the mapping "
                                          "and affine graphs, the fixed noise and manifest.json. Load the folder "
                                          "with soat.load(DIR, backend='onnxruntime').")
    p.add_argument("checkpoint", help="rosinality/SOAT checkpoint (.pt), or random[:SEED] for the built-in model")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="export folder (created if needed)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of weights and graph I/O")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}")
    p.add_argument("--size", type=int, default=None, help="output size of a random model (inferred from a checkpoint)")
    p.add_argument("--channel-multiplier", type=int, default=None, help="channel multiplier of a random model")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``soat export``; prints the manifest path. ``SoatError`` propagates to the CLI's handler."""
    path = export(args.checkpoint, args.out, dtype=args.dtype, opset=args.opset, progress=not args.no_progress,
                  size=args.size, channel_multiplier=args.channel_multiplier)
    print(path)
    return 0
