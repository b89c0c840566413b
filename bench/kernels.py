"""Microbenchmark of the feature-op kernels against their torch references (GPU).

    python -m soat.bench.kernels [--sizes 256 1024] [--batches 1 16] [--dtypes fp16 fp32]
                                 [--providers triton ref compile] [--ops PREFIX ...] [--levers]
                                 [--csv kernels.csv]

Every op at the shapes the 256 px and 1024 px tasks (channel multiplier 2) call it with.
Providers: ``triton`` (the kernel), ``ref`` (the torch reference, what runs on CPU) and
``compile`` (``torch.compile`` of the reference; opt-in, one compile per case). Time is
``triton.testing.do_bench``'s median (p20/p80 beside it, L2 flushed before each call);
bandwidth is the bytes the op must move (each input element it needs read once, each
output element written once) over that time, also as a fraction of the device-to-device
copy bandwidth measured in the same run. Each case also checks the kernel against the
reference (``max_err``) and reports the host time per call (``host_us``): where it
exceeds the kernel time, the op is launch-bound, not bandwidth-bound. Writes a CSV and
prints a table.

``--levers`` times round 8's levers (issue 31) instead, beside what they replace, as the tasks run
them: each call replayed from a CUDA graph (``graphed`` cases), so that a saved launch shows as saved
time. ``demod``: the factors of every styled conv of the chain in one launch against one launch per
layer (round 7); ``to_rgb chain``: every ToRGB of the chain with the tile the tasks take at that batch,
against whole-channel-row tiles at every batch and the fixed tiles of ``TO_RGB_TILES``; ``schedule``:
the blend-type tasks on a random model of the size (fast backend), both style lists as one batch of 2B
(``paired 2B`` row) against two runs per node (``separate`` row), forced at every batch (the tasks pair
only up to ``SOAT_PAIRED_MAX_BATCH``, off by default); ``max_err`` there is between the two images.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import soat
from soat.runtime.chain import build_chain
from soat.runtime.config import GeneratorConfig
from soat.runtime.endless import span_pad
from soat.triton_kernels._dispatch import kernels
from soat.triton_kernels.columns import concat_w_ref, place_columns_ref
from soat.triton_kernels.conv_epilogue import conv_epilogue, conv_epilogue_ref
from soat.triton_kernels.demod import DemodTable, demod_layers, demod_ref
from soat.triton_kernels.mask_lerp import mask_lerp_ref
from soat.runtime.capabilities import PRECISION_NAMES, precision
from soat.triton_kernels.modulate import modulate, modulate_ref
from soat.triton_kernels.ops import concat_w, mask_lerp, place_columns, ramp_lerp, region_copy, shift_lerp, widen
from soat.triton_kernels.ramp_lerp import ramp_lerp_ref
from soat.triton_kernels.region_copy import region_copy_ref
from soat.triton_kernels.to_rgb import to_rgb, to_rgb_ref
from soat.triton_kernels.shift_lerp import shift_lerp_ref
from soat.triton_kernels.widen import widen_ref

PROVIDERS = ("triton", "ref", "compile")
PAIRED_ENV = "SOAT_PAIRED_MAX_BATCH"
COPY_BYTES = 1 << 29  # 512 MiB each way: far past L2, so the copy runs at DRAM speed


@dataclass
class Case:
    """One op call: ``op(*args, impl=...)``; ``ref(*args)`` is its reference; ``nbytes`` the traffic it needs.

    ``graphed``: time each call replayed from a CUDA graph (several launches per call); ``labels``: provider
    names in the table where ``triton`` and ``ref`` mean something else (the schedules).
    """

    op: str
    shape: str
    nbytes: int
    kernel: Callable
    ref: Callable
    args: tuple
    graphed: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def _maps(n: int, shape, dtype, device, channels_last=False) -> list[torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(shape, dtype=dtype, device=device).to(memory_format=fmt) for _ in range(n)]


def cases(size: int, batch: int, dtype: torch.dtype, device: str) -> list[Case]:
    """The op calls of the ``size`` px tasks at ``batch``: the largest map each task hands each op."""
    ch = GeneratorConfig(size=size).channels
    es = torch.empty((), dtype=dtype).element_size()
    full = (batch, ch(size), size, size)
    mid = (batch, ch(64), 64, 64)  # the largest 512-channel map
    out = []
    for name, axis, pad, shape, cl in (("blend horizontal", 3, True, full, False),
                                       ("blend vertical", 2, True, full, False),
                                       ("blend channels_last", 3, True, full, True),
                                       ("merge", 3, False, (batch, ch(size), size, 2 * size), False)):
        x1, x2 = _maps(2, shape, dtype, device, cl)
        out.append(Case(f"ramp_lerp {name}", str(list(shape)), 3 * x1.numel() * es, ramp_lerp, ramp_lerp_ref,
                        (x1, x2, axis, pad)))
    mask = torch.rand(1, 1, size, size, dtype=dtype, device=device)
    for name, shape, zero, cl in (("full", full, False, False), ("channels_last", full, False, True),
                                  ("64px", mid, False, False), ("zero", full, True, False)):
        x1, x2 = _maps(2, shape, dtype, device, cl)
        traffic = (2 if zero else 3) * x1.numel() * es + (0 if zero else mask.numel() * es)
        out.append(Case(f"mask_lerp {name}", str(list(shape)), traffic, mask_lerp, mask_lerp_ref,
                        (x1, x2, mask, zero)))
    (f,) = _maps(1, (batch, ch(32), 32, 32), dtype, device)
    moves = [(16, 4, 8, 8, 12, 0), (4, 20, 8, 8, 0, 16)]
    out.append(Case("shift_lerp 2 moves", str(list(f.shape)), (2 * f.numel() + 2 * 64 * batch * ch(32)) * es,
                    shift_lerp, shift_lerp_ref, (f, moves, 0.8)))
    (x,) = _maps(1, (batch, ch(8), 8, 8), dtype, device)
    (skip,) = _maps(1, (batch, 3, 8, 8), dtype, device)
    for mode in ("reflect", "horizontal"):
        out.append(Case(f"widen {mode}", f"{list(x.shape)} + skip", 3 * (x.numel() + skip.numel()) * es,
                        widen, widen_ref, (x, skip, mode)))
    dst, src = _maps(2, (batch, ch(16), 16, 16), dtype, device)
    copies = [(2, 2, 8, 8, 6, 6), (8, 8, 2, 2, 6, 6)]
    out.append(Case("region_copy swap", str(list(dst.shape)), 2 * dst.numel() * es, region_copy, region_copy_ref,
                    (dst, src, copies)))
    a, b = _maps(2, (batch, ch(4), 4, 4), dtype, device)
    out.append(Case("concat_w", f"2 x {list(a.shape)}", 4 * a.numel() * es, concat_w, concat_w_ref, (a, b)))
    pano = torch.zeros(batch, 3, size, 4 * size, dtype=dtype, device=device)  # 4 images: 2R + 2R columns
    (span,) = _maps(1, (batch, 3, size, 2 * size), dtype, device)
    p = span_pad(size)
    out.append(Case("place_columns", f"{list(span.shape)} -> {list(pano.shape)}", 2 * batch * 3 * size * size * es,
                    place_columns, place_columns_ref, (pano, span, size + p, p, size)))
    out += layer_cases(size, batch, dtype, device)
    return out


def layer_cases(size: int, batch: int, dtype: torch.dtype, device: str) -> list[Case]:
    """The fast path's per-layer kernels at the top resolution (channels_last, as the torch backend runs them)."""
    ch = GeneratorConfig(size=size).channels
    es = torch.empty((), dtype=dtype).element_size()
    c, half = ch(size), size // 2
    noise = torch.randn(1, 1, size, size, dtype=dtype, device=device)
    noise_weight = torch.tensor([0.1], dtype=dtype, device=device)
    bias = torch.randn(c, dtype=dtype, device=device)
    demod = torch.rand(batch, c, dtype=dtype, device=device) + 0.5
    out = []
    for name, y_size, up in (("conv", size, False), ("up (blur)", 2 * half + 1, True)):
        (y,) = _maps(1, (batch, c, y_size, y_size), dtype, device, channels_last=True)
        traffic = (y.numel() + batch * c * size * size) * es
        out.append(Case(f"conv_epilogue {name}", str(list(y.shape)), traffic, conv_epilogue, conv_epilogue_ref,
                        (y, demod, noise, noise_weight, bias, up)))
    (x,) = _maps(1, (batch, ch(half), half, half), dtype, device, channels_last=True)
    style = torch.randn(batch, ch(half), dtype=dtype, device=device)
    out.append(Case("modulate", str(list(x.shape)), 2 * x.numel() * es, modulate, modulate_ref, (x, style)))
    (x,) = _maps(1, (batch, c, size, size), dtype, device, channels_last=True)
    (skip,) = _maps(1, (batch, 3, half, half), dtype, device)
    style, weight = torch.randn(batch, c, dtype=dtype, device=device), torch.randn(3, c, dtype=dtype, device=device)
    rgb_bytes = (x.numel() + batch * 3 * size * size + skip.numel()) * es
    rgb_args = (x, style, weight, bias[:3], skip)
    out.append(Case("to_rgb", str(list(x.shape)), rgb_bytes, to_rgb, to_rgb_ref, rgb_args))
    out.append(Case("to_rgb whole rows", str(list(x.shape)), rgb_bytes, whole_row_to_rgb, to_rgb_ref, rgb_args))
    return out


# fixed (pixels, channels) ToRGB tiles timed beside the two the tasks use (round 1's 64 x 64 among them): round 11
# chose the large-batch tile from these
TO_RGB_TILES = ((64, 64), (128, 32), (32, 128), (256, 16), (16, 256), (128, 64), (32, 64))


def fixed_tile_to_rgb(blocks: tuple[int, int]) -> Callable:
    def op(*args, impl: str) -> torch.Tensor:
        return kernels("to_rgb").to_rgb(*args, blocks=blocks)
    return op


def whole_row_to_rgb(x: torch.Tensor, *args, impl: str) -> torch.Tensor:
    """ToRGB with whole channel rows per tile at any batch (the tasks take it up to ``WHOLE_ROW_MAX_BATCH``)."""
    module = kernels("to_rgb")
    return module.to_rgb(x, *args, blocks=module.tile(x.shape[1]))


def lever_cases(size: int, batch: int, dtype: torch.dtype, device: str) -> list[Case]:
    """Round 8's levers, graphed, beside what they replace: the demodulation and ToRGB over the whole chain of a
    ``size`` px model, and the blend-type schedules."""
    chain = build_chain(GeneratorConfig(size=size))
    es = torch.empty((), dtype=dtype).element_size()
    convs = [n for n in chain if n.styled_conv]
    weight_sq = [torch.rand(n.in_channels, n.out_channels, dtype=dtype, device=device) / n.in_channels for n in convs]
    styles = [torch.randn(batch, n.in_channels, dtype=dtype, device=device) for n in convs]
    table = DemodTable(weight_sq)
    traffic = (table.packed.numel() + sum(s.numel() for s in styles) + batch * sum(table.outputs)) * es
    shape = f"{len(convs)} layers, [{batch}, {sum(table.inputs)}] styles"
    out = [Case("demod all layers", shape, traffic, lambda *a, impl: demod_layers(*a, impl=impl),
                lambda s, t, first: [demod_ref(x, t.weight_sq(first + k)) for k, x in enumerate(s)],
                (styles, table, 0), graphed=True),
           Case("demod per layer (round 7)", shape, traffic,
                lambda s, w, impl: [kernels("demod").demod(x, y) for x, y in zip(s, w)],
                lambda s, w: [demod_ref(x, y) for x, y in zip(s, w)], (styles, weight_sq), graphed=True)]
    layers = []  # (x, style, weight, bias, skip) of every ToRGB, channels_last x as the fast path's
    for node in (n for n in chain if n.kind == "to_rgb"):
        (x,) = _maps(1, (batch, node.in_channels, node.resolution, node.resolution), dtype, device, True)
        skip = None if node.resolution == 4 else torch.randn(batch, 3, node.resolution // 2, node.resolution // 2,
                                                             dtype=dtype, device=device)
        layers.append((x, torch.randn(batch, node.in_channels, dtype=dtype, device=device),
                       torch.randn(3, node.in_channels, dtype=dtype, device=device),
                       torch.randn(3, dtype=dtype, device=device), skip))
    traffic = sum(x.numel() + x[:, :3].numel() + (0 if k is None else k.numel()) for x, _, _, _, k in layers) * es
    shape = f"{len(layers)} layers, 4..{size} px"
    tiles = [(f"to_rgb chain tile {p}x{i}", fixed_tile_to_rgb((p, i))) for p, i in TO_RGB_TILES]
    for name, op in (("to_rgb chain", to_rgb), ("to_rgb chain whole rows", whole_row_to_rgb), *tiles):
        out.append(Case(name, shape, traffic, lambda ls, impl, op=op: [op(*a, impl=impl) for a in ls],
                        lambda ls: [to_rgb_ref(*a) for a in ls], (layers,), graphed=True))
    return out + schedule_cases(size, batch, dtype, device)


# the blend-type tasks, each as its schedule runs it: (name, output width in images, call); the box: a face's
# middle, as the README's example takes it at 256 px
SCHEDULES = (("blend", 1, lambda G, a, b: G.blend(a, b)),
             ("blend_bbox", 1, lambda G, a, b: G.blend_bbox(a, b, tuple(G.size * v // 8 for v in (2, 2, 4, 3)))),
             ("merge_extension", 2, lambda G, a, b: G.merge_extension(a, b)))


def schedule_cases(size: int, batch: int, dtype: torch.dtype, device: str) -> list[Case]:
    """The blend-type tasks on a random ``size`` px model (fast backend, every call graphed): ``triton`` runs both
    style lists as one batch of 2B per node, ``ref`` two runs per node, whatever the batch. Traffic: the image."""
    G = _model(size, dtype, device)
    z = torch.randn(2 * batch, G.config.style_dim, generator=torch.Generator().manual_seed(0))
    styles = G.styles(z.to(device))
    s1, s2 = [s[:batch] for s in styles], [s[batch:] for s in styles]
    out = []
    for name, images, call in SCHEDULES:
        image_bytes = batch * 3 * size * size * images * G.dtype.itemsize
        out.append(Case(f"schedule {name}", f"[{batch}, 3, {size}, {images * size}]", image_bytes,
                        lambda impl, call=call: paired_up_to(batch, call, G, s1, s2),
                        lambda call=call: paired_up_to(0, call, G, s1, s2), (),
                        graphed=True, labels={"triton": "paired 2B", "ref": "separate"}))
    return out


def paired_up_to(limit: int, call: Callable, *args) -> torch.Tensor:
    """``call(*args)`` with the tasks pairing the two style lists up to batch ``limit`` (the tasks' knob,
    ``SOAT_PAIRED_MAX_BATCH``: runtime/tasks/blend.py; bench imports no task module)."""
    default = os.environ.get(PAIRED_ENV)
    os.environ[PAIRED_ENV] = str(limit)
    try:
        return call(*args)
    finally:
        if default is None:
            del os.environ[PAIRED_ENV]
        else:
            os.environ[PAIRED_ENV] = default


@functools.cache
def _model(size: int, dtype: torch.dtype, device: str) -> soat.Generator:
    return soat.load("random", size=size, device=device, dtype=dtype, cuda_graphs=False)


def graph_replay(fn: Callable) -> Callable:
    """``fn`` captured once into a CUDA graph (after a warm-up call that compiles its kernels); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def timed(fn: Callable) -> tuple[float, float, float]:
    """Median, p20 and p80 milliseconds."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def host_us(fn: Callable, calls: int = 100) -> float:
    """Host microseconds per call (launch cost: wrapper checks, allocation, kernel launch), timed
    without synchronising between calls; for maps whose kernels outlast the launch this tends to GPU time."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read and written."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = timed(lambda: dst.copy_(src))
    return 2 * COPY_BYTES / ms / 1e6


def _outputs(out) -> list[torch.Tensor]:
    """The tensors an op returns (one, a tuple's first, or every one of a list: the chain cases)."""
    if isinstance(out, list):
        return out
    return [out[0] if isinstance(out, tuple) else out]


def max_err(a, b) -> float:
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(_outputs(a), _outputs(b), strict=True))


def run_case(case: Case, providers: list[str], copy_gbs: float) -> list[dict]:
    fns = {"triton": lambda: case.kernel(*case.args, impl="triton"), "ref": lambda: case.ref(*case.args)}
    if "compile" in providers:
        compiled = torch.compile(case.ref)
        fns["compile"] = lambda: compiled(*case.args)
    err = max_err(fns["triton"](), fns["ref"]())
    rows = []
    for provider in providers:
        fn = graph_replay(fns[provider]) if case.graphed else fns[provider]
        p50, p20, p80 = timed(fn)
        gbs = case.nbytes / p50 / 1e6
        rows.append({"op": case.op, "shape": case.shape, "provider": case.labels.get(provider, provider),
                     "graphed": case.graphed, "ms_p50": p50, "ms_p20": p20,
                     "ms_p80": p80, "MB": case.nbytes / 1e6, "GBps": gbs, "frac_copy": gbs / copy_gbs,
                     "host_us": host_us(fn, calls=max(5, min(100, int(50 / p50)))), "max_err": err})
    return rows


TABLE = "{op:30} {size:>5} {batch:>3} {dtype:5} {shape:40} {provider:9} {ms:>8} {gbs:>7} {frac:>5} {host:>7} {err:>8}"


def table_line(row: dict) -> str:
    return TABLE.format(op=row["op"], size=row["size"], batch=row["batch"], dtype=row["dtype"], shape=row["shape"],
                        provider=row["provider"], ms=f"{row['ms_p50']:.4f}", gbs=f"{row['GBps']:.0f}",
                        frac=f"{row['frac_copy']:.2f}", host=f"{row['host_us']:.1f}", err=f"{row['max_err']:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m soat.bench.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--dtypes", nargs="+", choices=list(PRECISION_NAMES), default=["fp16", "fp32"])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=["triton", "ref"])
    parser.add_argument("--ops", nargs="*", default=[], help="only cases whose name starts with one of these")
    parser.add_argument("--levers", action="store_true",
                        help="time round 8's levers beside what they replace instead (module docstring)")
    parser.add_argument("--csv", default="kernels.csv", help="where to write the results")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("the kernel microbenchmark needs a CUDA GPU")
    import triton

    device = "cuda"
    copy_gbs = copy_bandwidth(device)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"python {platform.python_version()}")
    print(f"# device-to-device copy: {copy_gbs:.0f} GB/s (read + write, {2 * COPY_BYTES >> 20} MiB)")
    rows = []
    print(TABLE.format(op="op", size="size", batch="B", dtype="dtype", shape="shape", provider="provider",
                       ms="ms", gbs="GB/s", frac="copy", host="host_us", err="err"))
    for size in args.sizes:
        for batch in args.batches:
            for dname in args.dtypes:
                dtype = precision(dname).torch_dtype
                for case in (lever_cases if args.levers else cases)(size, batch, dtype, device):
                    if args.ops and not any(case.op.startswith(o) for o in args.ops):
                        continue
                    try:
                        case_rows = run_case(case, args.providers, copy_gbs)
                    except torch.cuda.OutOfMemoryError:
                        print(f"# {case.op} {size} px, batch {batch}, {dname}: out of memory, skipped", flush=True)
                        torch.cuda.empty_cache()
                        continue
                    for row in case_rows:
                        rows.append({"gpu": torch.cuda.get_device_name(), "size": size, "batch": batch,
                                     "dtype": dname, **row})
                        print(table_line(rows[-1]), flush=True)
                torch.cuda.empty_cache()
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"# wrote {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
