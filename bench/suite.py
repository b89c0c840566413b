"""``soat bench``: every task x backend x precision x batch on this machine, against the fp32 torch path.

For each configuration: warm-up, then >= 30 timed calls (CUDA events on the GPU,
``perf_counter`` on the CPU), p50/p99 latency, images/s, peak GPU memory per image,
the ratio to the plain fp32 torch path (measured in the same run), and the PSNR of
its images against that path on the same inputs (run once with exact fp32 convolutions:
on the GPU PyTorch's default TF32 would blur the comparison; the baseline's own row
then shows TF32's error). Writes ``results.json``, a PNG
chart (matplotlib, when installed) and prints a table.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

import soat
from soat.bench.report import Result, device_name, format_row, format_table, run_info, write_chart, write_json
from soat.loader import parse_dtype
from soat.runtime.endless import span_columns

TASKS = ("generate", "blend", "merge_extension", "blend_bbox", "expand", "patch_swap", "panorama_stream")


@dataclass(frozen=True)
class Config:
    """One way to run the model: backend, precision and whether whole tasks replay as CUDA graphs."""

    backend: str = "torch"
    dtype: str = "fp32"
    cuda_graphs: bool = False

    @property
    def name(self) -> str:  # "-graph" (CUDA graphs) as in every stored result (bench/results)
        return f"{self.backend}-{self.dtype}" + ("-graph" if self.cuda_graphs else "")


BASELINE = Config()


def task_call(G, task: str, batch: int, styles_from=None) -> tuple[Callable[..., torch.Tensor], tuple]:
    """``(fn, args)`` running ``task`` on ``batch`` fixed random style draws (same draws for every config).

    ``styles_from`` (default ``G``) computes the styles: the suite passes its fp32 model, so every
    precision gets the same inputs (only rounded to its dtype) and fidelity measures the synthesis.
    """
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(2 * batch, G.config.style_dim, generator=gen)
    source = styles_from if styles_from is not None else G
    s = [t.to(G.device, G.dtype) for t in source.styles(z)]
    s1, s2 = [t[:batch] for t in s], [t[batch:] for t in s]
    R = G.size
    box = (R // 4, R // 4, R // 2, R // 2)
    lo, hi = span_columns(R, 1)  # the R new columns a middle span gives
    calls = {
        "generate": (lambda a: G.generate(a), (s1,)),
        "blend": (lambda a, b: G.blend(a, b), (s1, s2)),
        "merge_extension": (lambda a, b: G.merge_extension(a, b), (s1, s2)),
        "blend_bbox": (lambda a, b: G.blend_bbox(a, b, box), (s1, s2)),
        "expand": (lambda a: G.expand(a, "reflect", noise="fixed"), (s1,)),
        "patch_swap": (lambda a, b: G.patch_swap(a, b, ((0, 0, R // 2, R // 2), (R // 2, R // 2, R // 2, R // 2))),
                       (s1, s2)),
        # one streaming step: the next span (R new columns per image) of a panorama
        "panorama_stream": (lambda a, b: G.merge_extension(a, b)[..., lo:hi], (s1, s2)),
    }
    return calls[task]


@contextlib.contextmanager
def exact_fp32_convs():
    """cuDNN convolutions in true fp32 inside the block. PyTorch lets fp32 convolutions use TF32
    on the GPU by default (as the paper's code runs there): ~1e-3 relative error, which would
    hide the fp16/bf16 paths' own error, so fidelity is measured against this exact path."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def time_call(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call, ``iters`` samples after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (img.double().cpu() - ref.double().cpu()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def rel_err(img: torch.Tensor, ref: torch.Tensor) -> float:
    """``||img - ref|| / ||ref||`` in float64."""
    ref = ref.double().cpu()
    return ((img.double().cpu() - ref).norm() / ref.norm()).item()


def percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_one(G, cfg: Config, task: str, batch: int, warmup: int, iters: int, reference: dict,
              styles_from=None) -> Result:
    fn, args = task_call(G, task, batch, styles_from)  # the plain call: G replays its CUDA graphs when loaded with them
    run = fn
    dev = G.device
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        out = run(*args).float().clone()
        samples = time_call(lambda: run(*args), dev, warmup, iters)
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 / batch if dev.type == "cuda" else None
        p50 = statistics.median(samples)
        key = (task, batch)
        if cfg == BASELINE:
            with exact_fp32_convs():
                reference[key] = (fn(*args).float().clone(), p50)
    ref_out, ref_p50 = reference.get(key, (None, None))
    compare = ref_out is not None and (cfg != BASELINE or dev.type == "cuda")
    return Result(task, cfg.name, batch, p50, percentile(samples, 0.99), batch / p50 * 1e3, peak,
                  psnr(out, ref_out) if compare else None, rel_err(out, ref_out) if compare else None,
                  ref_p50 / p50 if ref_p50 else None)


# rough cost of one call relative to ``generate`` at the same batch (two syntheses, wider spans)
TASK_COST = {"generate": 1.0, "blend": 2.0, "merge_extension": 3.0, "blend_bbox": 2.0, "expand": 2.0,
             "patch_swap": 2.0, "panorama_stream": 3.0}


def header(device: str, source: str, size: int | None, channel_multiplier: int | None, configs: list[Config],
           tasks: list[str], batches: list[int], warmup: int, iters: int) -> str:
    """What the run will measure, printed before anything is loaded."""
    layout = f"{size}px" if size else "size from the checkpoint"
    if channel_multiplier:
        layout += f" cm{channel_multiplier}"
    return "\n".join([
        f"soat bench on {device_name(device)} (torch {torch.__version__})",
        f"  model:   {source} ({layout})",
        f"  configs: {', '.join(c.name for c in configs)}  (dtypes {', '.join(dict.fromkeys(c.dtype for c in configs))})",
        f"  tasks:   {', '.join(tasks)}",
        f"  batches: {', '.join(map(str, batches))}",
        f"  runs:    {warmup} warm-up + {iters} timed per row, {len(configs) * len(tasks) * len(batches)} rows"])


def estimate_seconds(G, configs: list[Config], tasks: list[str], batches: list[int], warmup: int,
                     iters: int) -> tuple[float, float]:
    """``(eta_s, ms of one generate call at batch 1)``: one probe call scaled by batch, task and repetitions
    (other precisions are assumed as fast as fp32; a first estimate, not a promise)."""
    fn, args = task_call(G, "generate", 1)
    with torch.no_grad():
        fn(*args)
        if G.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*args)
        if G.device.type == "cuda":
            torch.cuda.synchronize()
    one = time.perf_counter() - t0
    per_config = sum(TASK_COST.get(t, 2.0) * b for t in tasks for b in batches) * (warmup + iters + 2) * one
    return per_config * len(configs), one * 1e3


def run_suite(source: str, size: int | None, channel_multiplier: int | None, device: str, configs: list[Config],
              tasks: list[str], batches: list[int], warmup: int, iters: int, out_dir: str,
              baseline: bool = True, peers: bool = False, exports: dict[str, str] | None = None) -> list[Result]:
    """Benchmark every combination (the baseline first, unless ``baseline=False``: then no ratios or
    fidelity columns) and write ``results.json`` and ``chart.png``. Prints a header, then an ETA.
    ``peers``: also time ``torch.compile`` of the plain PyTorch form (``peers.py``) on generate, per
    dtype and batch, in the same run. ``exports``: ``{backend: export folder}`` to load that backend from
    instead of ``source`` (the folder must hold ``source``'s model)."""
    configs = ([BASELINE] if baseline else []) + [c for c in configs if c != BASELINE]
    print(header(device, source, size, channel_multiplier, configs, tasks, batches, warmup, iters), flush=True)
    os.makedirs(out_dir, exist_ok=True)
    reference: dict = {}
    results: list[Result] = []
    combos = [(c, t, b) for c in configs for t in tasks for b in batches]
    models: dict = {}
    for cfg, task, batch in tqdm(combos, desc="bench", unit="run"):
        key = (cfg.backend, cfg.dtype, cfg.cuda_graphs)
        if key not in models:
            models[key] = soat.load((exports or {}).get(cfg.backend, source), backend=cfg.backend, device=device, dtype=cfg.dtype, size=size,
                                    channel_multiplier=channel_multiplier, cuda_graphs=cfg.cuda_graphs)
            if len(models) == 1:
                eta, one_ms = estimate_seconds(models[key], configs, tasks, batches, warmup, iters)
                tqdm.write(f"  loaded:  {models[key].size}px cm{models[key].config.channel_multiplier}; "
                           f"one generate call {one_ms:.0f} ms -> ETA about {_duration(eta)}")
        try:
            results.append(bench_one(models[key], cfg, task, batch, warmup, iters, reference,
                                     models.get((BASELINE.backend, BASELINE.dtype, BASELINE.cuda_graphs))))
        except Exception as e:  # one failed config must not lose the rest (ONNX Runtime raises plain Exceptions)
            tqdm.write(f"{cfg.name} {task} B={batch}: failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            continue
        tqdm.write(format_row(results[-1]))
        # after every row, so that a run cut short keeps what it measured
        write_json(results, run_info(models, source, warmup, iters), os.path.join(out_dir, "results.json"))
    for dtype in sorted({c.dtype for c in configs}) if peers else ():
        for batch in batches:
            results.append(peer_result(source, size, channel_multiplier, device, dtype, batch, warmup, iters,
                                       reference, models.get((BASELINE.backend, BASELINE.dtype, BASELINE.cuda_graphs))))
            tqdm.write(format_row(results[-1]))
    info = run_info(models, source, warmup, iters)
    chart = write_chart(results, info, os.path.join(out_dir, "chart.png"), BASELINE.name)
    print(format_table(results, info))
    if chart:
        print(f"wrote {os.path.join(out_dir, 'results.json')} and {chart}")
    return results


def peer_result(source: str, size: int | None, channel_multiplier: int | None, device: str, dtype: str,
                batch: int, warmup: int, iters: int, reference: dict, styles_from) -> Result:
    """``generate`` by ``torch.compile(mode="reduce-overhead")`` of the plain PyTorch form, on the suite's
    styles; fidelity and speed-up against the baseline's row where it ran."""
    from .peers import compiled_peer

    peer = compiled_peer(source, size, channel_multiplier, device, parse_dtype(dtype))
    G = styles_from if styles_from is not None else soat.load(source, size=size, channel_multiplier=channel_multiplier,
                                                              device=device, cuda_graphs=False)
    _, (styles,) = task_call(G, "generate", batch)
    styles = [s.to(parse_dtype(dtype)) for s in styles]
    start = time.perf_counter()
    with torch.no_grad():
        out = peer(styles).float().clone()  # compiles (and captures) for this shape
        samples = time_call(lambda: peer(styles), torch.device(device), warmup, iters)
    p50 = statistics.median(samples)
    ref_out, ref_p50 = reference.get(("generate", batch), (None, None))
    return Result("generate", f"compile-{dtype}", batch, p50, percentile(samples, 0.99), batch / p50 * 1e3, None,
                  None if ref_out is None else psnr(out, ref_out), None if ref_out is None else rel_err(out, ref_out),
                  ref_p50 / p50 if ref_p50 else None,
                  extra={"compile_and_warmup_s": round(time.perf_counter() - start, 1)})


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
