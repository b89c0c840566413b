"""``python lab/aoti_node_probe.py``: what makes one AOTInductor CUDA package slow, node by node.

A lab probe, not part of the soat package (it imports the installed soat). Round 5's profile of the
exported 256 px model (bench/NOTES.md, the optimization table) put 6x the fast path's GPU time
into inductor's own pointwise kernels and ATen's generic depthwise kernel (the blur). This probe
compiles a few nodes of the random model as fp16 CUDA packages in several variants at once:

- ``dynamic``: batch, height and width dynamic, as ``soat export --format aoti`` compiles them, but
  traced on native-size inputs (the export traces on 4 x 8 maps);
- ``static-hw``: batch dynamic, height and width fixed at the node's native size (index arithmetic
  then divides by constants);
- ``dynamic-taps`` / ``static-hw-taps``: the upsampling blur written as 16 weighted slices, which
  inductor fuses into the epilogue's pointwise kernel instead of calling the depthwise conv;
- ``cl-inputs``: dynamic, inputs channels_last, weights contiguous; ``cl-static-hw-taps``:
  channels_last inputs, static height and width, blur as taps;
- ``cl-weights``: inputs and weights channels_last (round 5: a ToRGB-with-skip package compiled so
  gave rel err 1.24 on CUDA, exact on the CPU);
- ``fused``: what ``soat export --format aoti --device cuda`` compiles (``runtime/fused_graph_modules.py``:
  the fast path's kernels inside, ``x`` channels_last), dynamic; the only variant of a linked graph
  (``convs.10.linked``: ``x_mod`` channels_last), which the fast path has no single graph to compare with.

and prints, per package, its relative error against the graph module in fp32 and its median time
at ``--batch`` on the node's native size (CUDA events).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from soat.bench.suite import percentile, rel_err, time_call

GRAPHS = "convs.10,convs.11,to_rgbs.5"
# name -> (height and width dynamic, blur as taps, inputs channels_last, weights channels_last); "fused" is the
# export's own form, whose module says which inputs are channels_last
VARIANTS = {"dynamic": (True, False, False, False), "static-hw": (False, False, False, False),
            "dynamic-taps": (True, True, False, False), "static-hw-taps": (False, True, False, False),
            "cl-inputs": (True, False, True, False), "cl-static-hw-taps": (False, True, True, False),
            "cl-weights": (True, False, True, True), "fused": (True, False, ("x", "x_mod"), False)}


def _weights(size: int):
    from soat.runtime.sources import load_weights
    return load_weights("random", size, None)[0]


def _blur_taps(out: torch.Tensor) -> torch.Tensor:
    """``conv2d(out, blur, padding=1, groups=C)`` as 16 weighted slices of the padded map."""
    from soat.triton_kernels.fir import BLUR_KERNEL
    k = BLUR_KERNEL.tolist()
    p = F.pad(out, (1, 1, 1, 1))
    h, w = out.shape[2] - 1, out.shape[3] - 1
    return sum(k[a][b] * p[:, :, a:a + h, b:b + w] for a in range(4) for b in range(4))


def _taps_forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    out = self.shared_conv(x * style[:, :, None, None])
    if self.demodulate:
        out = out * self.demod(style)[:, :, None, None]
    return _blur_taps(out) if self.upsample else out


def _laid_out(name: str, t: torch.Tensor, channels_last: bool | tuple[str, ...]) -> torch.Tensor:
    """``t`` channels_last where the variant says (every map, or the named inputs), else contiguous."""
    cl = name in channels_last if isinstance(channels_last, tuple) else channels_last and t.dim() == 4
    return t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _inputs(config, graph_id: str, batch: int, channels_last: bool | tuple[str, ...],
            seed: int) -> list[torch.Tensor]:
    from soat.runtime.graphs import graph_io, input_shapes
    shapes = input_shapes(config, graph_id, batch=batch)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name in graph_io(config, graph_id)[0]:
        shape = list(shapes[name])
        if name == "noise":
            shape[0] = batch
        out.append(_laid_out(name, torch.randn(shape, generator=gen).to("cuda", torch.float16), channels_last))
    return out


def _compile(size: int, graph_id: str, variant: str, path: str) -> str:
    from soat.export.aoti_export import dynamic_shapes, export_module
    from soat.runtime.graph_modules import ModConv, graph_module
    from soat.runtime.graphs import graph_io
    hw_dynamic, taps, channels_last, weights_cl = VARIANTS[variant]
    if taps:
        ModConv.forward = _taps_forward
    weights = _weights(size)
    form = export_module if variant == "fused" else (lambda w, g, _: graph_module(w, g))
    module = form(weights, graph_id, "cuda").eval().to("cuda", torch.float16)
    if weights_cl:
        module = module.to(memory_format=torch.channels_last)
    names = graph_io(weights.config, graph_id)[0]
    specs = dynamic_shapes(weights.config, graph_id)
    if not hw_dynamic:
        specs = {name: {0: axes[0]} for name, axes in specs.items()}
    with torch.no_grad():
        program = torch.export.export(module, tuple(_inputs(weights.config, graph_id, 2, channels_last, 0)),
                                      dynamic_shapes=tuple(specs.get(n) for n in names))
        torch._inductor.aoti_compile_and_package(program, package_path=path)
    return path


def _median_ms(fn) -> float:
    """Median of 20 CUDA-event timings after 3 warm-up calls (the suite's timer)."""
    return percentile(time_call(fn, torch.device("cuda"), warmup=3, iters=20), 0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python lab/aoti_node_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="random model size (default 256)")
    p.add_argument("--graphs", default=GRAPHS, help="comma-separated graph ids (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    p.add_argument("--batch", type=int, default=128, help="batch of the timed runs (default 128)")
    p.add_argument("--workers", type=int, default=min(15, os.cpu_count() or 1))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("aoti_node_probe needs a CUDA GPU", file=sys.stderr)
        return 2
    from soat.runtime.backends.aoti_backend import expose_cxx_runtime
    from soat.runtime.backends.fast_backend import FastTorchBackend
    from soat.runtime.graph_modules import graph_module
    from soat.runtime.graphs import graph_ids, graph_io
    folder = tempfile.mkdtemp(prefix="aoti-node-")
    jobs = {(g, v): os.path.join(folder, f"{g}-{v}.pt2") for g in args.graphs.split(",")
            for v in args.variants.split(",")}
    # one compile per process: the taps variants patch ModConv.forward in theirs
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = {key: pool.submit(_compile, args.size, key[0], key[1], path) for key, path in jobs.items()}
        for key, f in futures.items():
            try:
                f.result()
            except Exception as e:  # one line per failed compile; the others still run
                print(f"{key[0]} {key[1]}: compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    expose_cxx_runtime()
    weights = _weights(args.size)
    fast = FastTorchBackend(weights, "cuda", torch.float16)
    for graph_id in args.graphs.split(","):
        names = graph_io(weights.config, graph_id)[0]
        x = _inputs(weights.config, graph_id, args.batch, True, 1)
        inputs = dict(zip(names, x))
        if graph_id in graph_ids(weights.config):
            print(f"{graph_id:<10} fast path (its kernels, channels_last): "
                  f"{_median_ms(lambda: fast.run(graph_id, inputs)):8.3f} ms at batch {args.batch}", flush=True)
        with torch.no_grad():
            small = _inputs(weights.config, graph_id, 2, False, 2)
            want = graph_module(weights, graph_id).eval().cuda()(*[t.float() for t in small])
            want = (want if torch.is_tensor(want) else want[0]).float()  # a linked graph's first output
        for (gid, variant), path in jobs.items():
            if gid != graph_id or not os.path.exists(path):
                continue
            cl = VARIANTS[variant][2]
            loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", True, 1, -1)
            got = loader.run([_laid_out(n, t, cl) for n, t in zip(names, small)])[0].float()
            err = rel_err(got, want)
            big = [_laid_out(n, t, cl) for n, t in zip(names, x)]
            ms = _median_ms(lambda: loader.run(big))
            print(f"{graph_id:<10} {variant:<15} rel err {err:.1e}  {ms:8.3f} ms at batch {args.batch}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
