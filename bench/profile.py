"""Where a task's GPU time goes: the kernels of one call, grouped, from ``torch.profiler``.

    python -m soat.bench.profile --task generate --dtype fp16 --batch 32 [--size 256] [--backend B] [--plain]

Profiles ``--iters`` eager calls after a warm-up and prints the share of device time per
kernel group (convolutions, elementwise, Triton, copies/layout, other) and the top kernels.
This is what the optimizations in ``bench/NOTES.md`` were chosen from. ``--backend`` profiles another backend
the same way (``onnxruntime``: a random model is exported into the cache first; the profiler sees ONNX
Runtime's kernels too).

``--plain`` looks at the plain call instead (CUDA graphs on, as users call): its wall time to the
result, the GPU time between events around it, and the host's own time per call by op (where a
batch-1 call spends what its graph replay does not).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import soat
from soat.bench.suite import TASKS, task_call
from soat.runtime.capabilities import AUTO, BACKEND_CHOICES

# first match wins; names are CUDA kernel names as the profiler reports them
GROUPS = (
    ("triton", r"^(triton|_?[a-z_]*_kernel$)"),
    ("conv (cuDNN/cutlass)", r"conv|cudnn|sm90|cutlass|xmma|implicit_gemm|dgrad|wgrad|fprop"),
    ("matmul", r"gemm|gemv|cublas"),
    ("layout / copy", r"nchwToNhwc|nhwcToNchw|transpose|copy|Memcpy|Memset|cat"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce"),
)


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return group
    return "other"


def device_times(prof) -> dict[str, tuple[float, int]]:
    """Kernel name -> (total device µs, calls)."""
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = e.self_cuda_time_total
        if t > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.key][0] += t
            out[e.key][1] += e.count
    return {k: (v[0], v[1]) for k, v in out.items()}


def plain_call(fn, call_args: tuple, iters: int, top: int) -> None:
    """The anatomy of a plain (graphed) call: wall time, the events' GPU interval, host time by op."""
    with torch.no_grad():
        for _ in range(5):  # the capture, then replays
            fn(*call_args)
        torch.cuda.synchronize()
        walls, gpu = [], []
        for _ in range(100):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            fn(*call_args)
            end.record()
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t0) * 1e3)
            gpu.append(start.elapsed_time(end))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                fn(*call_args)
            torch.cuda.synchronize()
    print(f"plain call: wall p50 {statistics.median(walls):.3f} ms, GPU interval between events "
          f"p50 {statistics.median(gpu):.3f} ms")
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"host time per call {total / iters / 1e3:.3f} ms; the largest ops (self µs per call, calls per call):")
    for e in rows[:top]:
        print(f"  {e.self_cpu_time_total / iters:8.1f}  {e.count / iters:5.1f}  {e.key[:100]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="random")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--task", default="generate", choices=TASKS)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--backend", default=AUTO, choices=BACKEND_CHOICES)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--plain", action="store_true",
                   help="the plain (graphed) call's anatomy instead (host time over --iters calls, 20 at least)")
    args = p.parse_args()
    G = soat.load(args.checkpoint, backend=args.backend, device="cuda", dtype=args.dtype, size=args.size,
                  cuda_graphs=args.plain)
    fn, call_args = task_call(G, args.task, args.batch)
    if args.plain:
        plain_call(fn, call_args, max(args.iters, 20), args.top)
        return
    with torch.no_grad():
        for _ in range(3):
            fn(*call_args)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                fn(*call_args)
            torch.cuda.synchronize()
    kernels = device_times(prof)
    total = sum(t for t, _ in kernels.values())
    per_call = total / args.iters / 1e3
    print(f"{args.task} {G.backend.name} {args.dtype} B={args.batch} {args.size} px: {per_call:.3f} ms device time "
          f"per call, {per_call / args.batch * 1e3:.1f} µs per image")
    groups: dict[str, float] = defaultdict(float)
    for name, (t, _) in kernels.items():
        groups[group_of(name)] += t
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * t / total:5.1f}%  {g}")
    print(f"top {args.top} kernels (share, µs per call, launches per call, name):")
    for name, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {100 * t / total:5.1f}%  {t / args.iters:8.1f}  {n / args.iters:5.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
