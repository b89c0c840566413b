"""``soat bench``: the benchmark suite from the command line, with defaults that fit the device."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..errors import SoatError
from ..options import (DTYPE_CHOICES, add_checkpoint, add_device, add_force, check_checkpoint,
                          check_output_folder, int_range)
from ..runtime.config import SUPPORTED_SIZES
from ..runtime.capabilities import BACKEND_CHOICES, EXPORT_BACKENDS
from .suite import TASKS

# per device: what a run measures when not told (the CPU: fp32 only, few runs, a small model)
DEFAULTS = {
    "cpu": {"dtypes": "fp32", "batches": "1,4", "warmup": 1, "iters": 3, "size": 64,
            "tasks": "generate,blend,merge_extension,blend_bbox"},
    "cuda": {"dtypes": "fp32,fp16", "batches": "1,8,32", "warmup": 5, "iters": 30, "size": 256,
             "tasks": "generate,blend,merge_extension,blend_bbox,expand,panorama_stream"},
}
OUTPUTS = ("results.json", "chart.png")
CUDA_GRAPH_MODES = {"on": [True], "off": [False], "both": [False, True]}  # --cuda-graphs: the configs it runs


class DeprecatedAlias(argparse.Action):
    """A flag's old name: stores as the new one (its ``dest``) after a one-line notice on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest.replace("_", "-")
        print(f"{parser.prog}: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> argparse.ArgumentParser:
    cpu, cuda = DEFAULTS["cpu"], DEFAULTS["cuda"]
    p = sub.add_parser(
        "bench", help="latency, throughput, memory and fidelity of the tasks per backend, dtype and batch",
        description="Time every task x backend x dtype x batch against the fp32 torch path on this machine; "
                    "prints a header and an ETA first, a row per run, then writes results.json and chart.png. "
                    f"Defaults follow the device: on the CPU {cpu['dtypes']} only, batches {cpu['batches']}, "
                    f"{cpu['warmup']}+{cpu['iters']} runs, a {cpu['size']}px random model; on CUDA {cuda['dtypes']}, "
                    f"batches {cuda['batches']}, {cuda['warmup']}+{cuda['iters']} runs, {cuda['size']}px.")
    add_checkpoint(p)
    p.add_argument("--size", type=int, choices=SUPPORTED_SIZES, default=None, metavar="R",
                   help=f"size of the random model (default {cpu['size']} on the CPU, {cuda['size']} on CUDA)")
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2], default=None,
                   help="channel multiplier of the random model (default 2)")
    add_device(p, "cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tasks", default=None, metavar="LIST",
                   help=f"comma list of {', '.join(TASKS)} (default on the CPU {cpu['tasks']}; on CUDA {cuda['tasks']})")
    p.add_argument("--backends", default="auto", metavar="LIST",
                   help=f"comma list of {', '.join(BACKEND_CHOICES)}; auto = fast for fp16/bf16, torch for fp32 (default auto)")
    p.add_argument("--dtypes", default=None, metavar="LIST",
                   help=f"comma list of {', '.join(DTYPE_CHOICES)} (default {cpu['dtypes']} on the CPU, "
                        f"{cuda['dtypes']} on CUDA)")
    p.add_argument("--batches", default=None, metavar="LIST",
                   help=f"comma list of batch sizes (default {cpu['batches']} on the CPU, {cuda['batches']} on CUDA)")
    p.add_argument("--cuda-graphs", choices=CUDA_GRAPH_MODES, default=None,
                   help="replay whole tasks as CUDA graphs (default: both on CUDA, off on CPU)")
    p.add_argument("--graphs", dest="cuda_graphs", choices=CUDA_GRAPH_MODES, action=DeprecatedAlias,
                   help=argparse.SUPPRESS)  # the old name of --cuda-graphs
    p.add_argument("--peers", action="store_true",
                   help="also time torch.compile(mode='reduce-overhead') of a plain PyTorch StyleGAN2 form on "
                        "generate, per dtype and batch, in the same run (the anchor for the table)")
    p.add_argument("--export", action="append", default=[], metavar="BACKEND=DIR",
                   help="run BACKEND from this export folder instead of exporting --checkpoint into the cache "
                        "(needed for aoti: soat export --format aoti makes one); repeatable")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the fp32 reference rows (large-batch throughput runs; no ratio or PSNR columns)")
    p.add_argument("--warmup", type=int_range(0, 1000), default=None,
                   help=f"untimed calls before timing (default {cpu['warmup']} on the CPU, {cuda['warmup']} on CUDA)")
    p.add_argument("--iters", type=int_range(1, 100000), default=None,
                   help=f"timed calls per row (default {cpu['iters']} on the CPU, {cuda['iters']} on CUDA)")
    p.add_argument("-o", "--output", default="bench-results", metavar="FOLDER",
                   help="folder for results.json and chart.png (default bench-results)")
    add_force(p)
    p.set_defaults(func=run)
    return p


def _choose(text: str, allowed, flag: str) -> list[str]:
    items = _list(text)
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise SoatError(f"{flag} {text!r}: {', '.join(unknown) or 'empty'} unknown; choose from {', '.join(allowed)}")
    return items


def _exports(items: list[str], backends: list[str]) -> dict[str, str]:
    """``--export BACKEND=DIR`` flags as ``{backend: folder}``: an export backend of ``--backends``, once
    each, and a folder that exists."""
    allowed = [b for b in backends if b in EXPORT_BACKENDS]
    exports: dict[str, str] = {}
    for item in items:
        backend, sep, folder = item.partition("=")
        if not sep or backend not in allowed or not os.path.isdir(folder):
            raise SoatError(f"--export {item!r} must be BACKEND=DIR with BACKEND an export backend of --backends "
                            f"({', '.join(allowed) or 'none given'}) and DIR an export folder")
        if backend in exports:
            raise SoatError(f"--export names {backend} twice; give one folder per backend")
        exports[backend] = folder
    return exports


def run(args: argparse.Namespace) -> int:
    from .suite import Config, run_suite
    from ..loader import resolve_backend

    cuda = torch.device(args.device).type == "cuda"
    d = DEFAULTS["cuda" if cuda else "cpu"]
    tasks = _choose(args.tasks or d["tasks"], TASKS, "--tasks")
    backends = _choose(args.backends, BACKEND_CHOICES, "--backends")
    dtypes = _choose(args.dtypes or d["dtypes"], DTYPE_CHOICES, "--dtypes")
    try:
        batches = [int(b) for b in _list(args.batches or d["batches"])]
    except ValueError:
        raise SoatError(f"--batches {args.batches!r} must be a comma list of integers") from None
    if not batches or min(batches) < 1 or max(batches) > 4096:
        raise SoatError(f"--batches {args.batches!r}: batch sizes run from 1 to 4096")
    cuda_graphs = args.cuda_graphs or ("both" if cuda else "off")
    if cuda_graphs != "off" and not cuda:
        raise SoatError("--cuda-graphs needs --device cuda")
    check_output_folder(args.output, args.force, OUTPUTS)
    check_checkpoint(args.checkpoint)
    size = args.size or (d["size"] if args.checkpoint.split(":")[0] == "random" else None)
    modes = CUDA_GRAPH_MODES[cuda_graphs]
    configs = [Config(resolve_backend(b, t), t, g) for b in backends for t in dtypes for g in modes]
    warmup = d["warmup"] if args.warmup is None else args.warmup
    iters = d["iters"] if args.iters is None else args.iters
    run_suite(args.checkpoint, size, args.channel_multiplier, args.device, configs, tasks, batches,
              warmup, iters, args.output, baseline=not args.no_baseline, peers=args.peers,
              exports=_exports(args.export, backends))
    return 0
