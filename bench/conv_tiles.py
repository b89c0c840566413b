"""Launch choices of the fused 3x3 conv (``triton_kernels/conv3x3_kernel.py``) against cuDNN, per layer (GPU).

    python -m soat.bench.conv_tiles [--size 256] [--resolutions 8 64 128 256] [--batches 1 8 128]
                                    [--dtype fp16] [--csv conv_tiles.csv]

For each 3x3 styled conv of a ``--size`` px model (channel multiplier 2) at each resolution and
batch: the default launch (``launch``), every candidate of ``CANDIDATES`` (blocks, warps, stages;
split-K as ``split_count`` chooses, and unsplit), and cuDNN's conv followed by the epilogue kernel
(what the fused kernel replaces), each graphed (``bench/kernels.py``'s ``graph_replay``), median
ms and TFLOP/s of the conv's 2 x pixels x 9I x O operations. The table marks the fastest launch per
layer; the default should be it or within a few percent, and where cuDNN wins, the batch limit
(``FUSED_CONV_MAX_BATCH``) belongs below that batch.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch

from soat.runtime.capabilities import PRECISION_NAMES, precision
from soat.runtime.config import GeneratorConfig
from soat.triton_kernels._dispatch import kernels
from soat.triton_kernels.conv_epilogue import conv_epilogue_modulated

from .kernels import graph_replay, timed

# (BM, BN, BK), warps, stages
CANDIDATES = [((64, 64, 64), 4, 3), ((128, 64, 64), 4, 3), ((64, 128, 64), 4, 3), ((128, 128, 64), 8, 3),
              ((128, 128, 64), 4, 4), ((128, 128, 32), 8, 4), ((128, 256, 64), 8, 3), ((256, 128, 64), 8, 3)]


def layer(resolution: int, channels: int, batch: int, dtype: torch.dtype) -> tuple:
    """A 3x3 layer's inputs as the fast path holds them (channels_last), writing ``x`` and the next input."""
    g = torch.Generator(device="cuda").manual_seed(resolution)

    def randn(*shape):
        return torch.randn(shape, generator=g, device="cuda").to(dtype)

    x_mod = randn(batch, channels, resolution, resolution).contiguous(memory_format=torch.channels_last)
    weight = (randn(channels, channels, 3, 3) / (3 * channels ** 0.5)).contiguous(memory_format=torch.channels_last)
    return (x_mod, weight, randn(batch, channels).abs() + 0.5, randn(1, 1, resolution, resolution),
            torch.tensor([0.1], device="cuda", dtype=dtype), randn(channels), randn(batch, channels))


def launches(x_mod: torch.Tensor, out_channels: int) -> dict[str, object]:
    """The default launch and every candidate, split as chosen and unsplit (where that differs), by name."""
    module = kernels("conv3x3")
    plans = {"default": module.launch(x_mod, out_channels)}
    for blocks, warps, stages in CANDIDATES:
        for split in (None, 1):
            plan = module.launch(x_mod, out_channels, split, blocks, warps, stages)
            plans.setdefault(f"{'x'.join(map(str, blocks))} w{warps} s{stages} split{plan.split}", plan)
    return plans


def rows_for(size: int, resolution: int, batch: int, dtype: torch.dtype) -> list[dict]:
    channels = GeneratorConfig(size=size).channels(resolution)
    args = layer(resolution, channels, batch, dtype)
    x_mod, weight, demod, noise, noise_weight, bias, next_style = args
    module = kernels("conv3x3")
    flops = 2 * batch * resolution ** 2 * 9 * channels * channels

    def unfused():
        y = torch.nn.functional.conv2d(x_mod, weight, padding=1)
        return conv_epilogue_modulated(y, demod, noise, noise_weight, bias, False, next_style, True)

    calls = {"cudnn+epilogue": unfused}
    for name, plan in launches(x_mod, channels).items():
        calls[name] = lambda plan=plan: module.conv3x3_epilogue(*args, True, plan)
    want = unfused()[1].float()
    rows = []
    for name, call in calls.items():
        err = (call()[1].float() - want).abs().max().item()
        ms = timed(graph_replay(call))[0]
        rows.append({"size": size, "resolution": resolution, "batch": batch, "channels": channels, "launch": name,
                     "ms": ms, "tflops": flops / ms / 1e9, "max_err": err})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m soat.bench.conv_tiles", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[8, 64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 128])
    parser.add_argument("--dtype", choices=list(PRECISION_NAMES), default="fp16")
    parser.add_argument("--csv", default="conv_tiles.csv")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("soat: error: the conv launch sweep needs a CUDA GPU")
    print(f"device: {torch.cuda.get_device_name()}; {args.size} px model, {args.dtype}, graphed, median ms", flush=True)
    rows = []
    for resolution in args.resolutions:
        for batch in args.batches:
            found = rows_for(args.size, resolution, batch, precision(args.dtype).torch_dtype)
            best = min((r for r in found if r["launch"] != "cudnn+epilogue"), key=lambda r: r["ms"])
            for r in found:
                mark = "  <- fastest fused" if r is best else ""
                print(f"{resolution:4} px b{batch:<4} {r['channels']:4} ch {r['launch']:32} {r['ms']:9.4f} ms "
                      f"{r['tflops']:7.1f} TFLOP/s err {r['max_err']:.1e}{mark}", flush=True)
            rows += found
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
