"""``soat engines DIR [--flavour rtx|trt] [--max-batch N] [--compute-capability 8.6 ...] [--check]``
(wired into ``soat/cli.py``): build and cache a TensorRT engine per graph of an export folder
ahead of time, into ``DIR/engines/`` (``soat.runtime.backends.trt_backend``'s cache).

The rtx flavour (TensorRT for RTX) needs no GPU: it builds for the listed compute
capabilities (default: every one it can target; fp32 engines leave out 7.5). The trt
flavour (data-center TensorRT) builds on and for the GPU of this machine. Cached engines
that match are kept; stale, truncated or foreign ones are rebuilt with a message, or with
``--check`` refused (exit status 1) and nothing is built.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from tqdm import tqdm

from ..errors import SoatError
from ..runtime.backends.trt_engines import ENGINE_DIR, engine_folder, ensure_engine
from ..runtime.backends.trt_flavours import FLAVOURS, MODULES, select_flavour
from ..runtime.graphs import graph_ids
from ..runtime.manifest import read_manifest
from ..runtime.shape_plan import MAX_BATCH


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``engines`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser("engines", help="build and cache a TensorRT engine per graph of an export folder",
                              description="Build a TensorRT engine per graph of an export folder ahead of time and "
                                          "cache it under DIR/engines, keyed by graph sha256, flavour, TensorRT "
                                          "version and target. soat.load(DIR, backend='tensorrt') uses them.")
    p.add_argument("folder", metavar="DIR", help="export folder (soat export)")
    p.add_argument("--flavour", choices=FLAVOURS, default=None,
                   help="rtx: TensorRT for RTX, ahead of time, no GPU needed; trt: data-center TensorRT, on this "
                        "machine's GPU (default: trt when the tensorrt module imports, else rtx)")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, metavar="N",
                   help=f"largest batch of the chain engines (default {MAX_BATCH}; larger batches run in chunks)")
    p.add_argument("--compute-capability", nargs="+", default=None, metavar="X.Y",
                   help="rtx: target compute capabilities, e.g. 8.6 8.9 (default: every one it can target)")
    p.add_argument("--check", action="store_true", help="build nothing: exit 1 if an engine is missing or stale")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``soat engines``; prints one line per engine built or refused, then the folder.
    ``SoatError`` propagates to the CLI's handler."""
    if not isinstance(args.max_batch, int) or args.max_batch < 1:
        raise SoatError(f"--max-batch {args.max_batch!r} must be an integer >= 1")
    manifest = read_manifest(args.folder)
    engine_dir = engine_folder(os.path.join(manifest.folder, ENGINE_DIR), create=not args.check)
    flavour = select_flavour(args.flavour)
    device = torch.device("cuda") if torch.cuda.is_available() and flavour.name == "trt" else None
    targets = flavour.targets(manifest.dtype, args.compute_capability, device)
    problems = []
    print(f"{MODULES[flavour.name]} {flavour.version}, {manifest.dtype}, targets {','.join(targets)}, "
          f"max batch {args.max_batch}", file=sys.stderr)
    bar = tqdm(graph_ids(manifest.config), desc="engines", unit="graph", disable=args.no_progress)
    for gid in bar:
        try:
            _, _, what = ensure_engine(flavour, manifest, gid, engine_dir, targets, args.max_batch, check=args.check)
        except SoatError as e:
            if not args.check:
                raise
            problems.append(str(e))
            continue
        if what.startswith("rebuilt"):
            tqdm.write(f"{gid}: {what}", file=sys.stderr)
    for line in problems:
        print(line, file=sys.stderr)
    print(engine_dir)
    return 1 if problems else 0

