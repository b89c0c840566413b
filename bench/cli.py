"""``soat bench``: the benchmark suite from the command line."""

from __future__ import annotations

import argparse

import torch


def _list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="latency, throughput, memory and fidelity of every task, backend, dtype, batch")
    p.add_argument("--checkpoint", default="random", help="model (default: the embedded random generator)")
    p.add_argument("--size", type=int, default=None, help="size of the random model (default 256)")
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2], default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tasks", default="generate,blend,merge_extension,blend_bbox,expand,panorama_stream")
    p.add_argument("--backends", default="auto",
                   help="comma list: auto (fast for fp16/bf16, torch for fp32), torch, fast, onnxruntime, tensorrt")
    p.add_argument("--dtypes", default="fp32,fp16", help="comma list: fp32, fp16, bf16")
    p.add_argument("--batches", default="1,8,32", help="comma list of batch sizes")
    p.add_argument("--graphs", choices=["on", "off", "both"], default=None,
                   help="replay whole tasks as CUDA graphs (default: both on CUDA, off on CPU)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the fp32 reference rows (large-batch throughput runs; no ratio or PSNR columns)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("-o", "--output", default="bench-results", help="folder for results.json and chart.png")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from soat.bench.suite import TASKS, Config, run_suite
    from soat.runtime.load import resolve_backend
    from soat.errors import SoatError

    tasks = _list(args.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SoatError(f"--tasks {unknown} unknown; choose from {', '.join(TASKS)}")
    cuda = torch.device(args.device).type == "cuda"
    graphs = args.graphs or ("both" if cuda else "off")
    if graphs != "off" and not cuda:
        raise SoatError("--graphs needs --device cuda")
    modes = {"on": [True], "off": [False], "both": [False, True]}[graphs]
    configs = [Config(resolve_backend(b, d), d, g) for b in _list(args.backends) for d in _list(args.dtypes)
               for g in modes]
    try:
        batches = [int(b) for b in _list(args.batches)]
    except ValueError:
        raise SoatError(f"--batches {args.batches!r} must be a comma list of integers") from None
    run_suite(args.checkpoint, args.size, args.channel_multiplier, args.device, configs, tasks, batches,
              args.warmup, args.iters, args.output, baseline=not args.no_baseline)
    return 0
