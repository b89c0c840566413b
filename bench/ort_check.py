"""``python -m soat.bench.ort_check --size 256``: ONNX Runtime fp16 with its CUDA graphs against exact fp32.

Loads the random model twice on CUDA: the torch backend in fp32 with TF32 off (the exact
reference) and ONNX Runtime on an fp16 export of the same weights with CUDA graphs on. Runs
generate, blend and merge_extension at batch 1 and 8 on the suite's fixed random styles (each
task twice, so the second call replays the captures), prints one PSNR line each and exits 1 if
any is below ``--min-psnr``.
"""

from __future__ import annotations

import argparse
import sys

import torch

import soat
from .suite import exact_fp32_convs, psnr, task_call

TASKS = ("generate", "blend", "merge_extension")
BATCHES = (1, 8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m soat.bench.ort_check", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="size of the random model (default 256)")
    p.add_argument("--min-psnr", type=float, default=50.0, help="fail below this PSNR in dB (default 50)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("ort_check needs a CUDA GPU", file=sys.stderr)
        return 2
    ref = soat.load("random", device="cuda", size=args.size, cuda_graphs=False)
    ort = soat.load("random", backend="onnxruntime", device="cuda", dtype="fp16", size=args.size, cuda_graphs=True)
    worst = float("inf")
    with torch.no_grad():
        for task in TASKS:
            for batch in BATCHES:
                fn, inputs = task_call(ref, task, batch)
                with exact_fp32_convs():
                    want = fn(*inputs)
                fn, inputs = task_call(ort, task, batch, styles_from=ref)
                fn(*inputs)  # captures
                db = psnr(fn(*inputs).float(), want)
                worst = min(worst, db)
                print(f"{task:<16} B={batch}: {db:6.1f} dB", flush=True)
    print(f"worst {worst:.1f} dB (threshold {args.min_psnr:g} dB)")
    return 0 if worst >= args.min_psnr else 1


if __name__ == "__main__":
    sys.exit(main())
