"""The host cost of one stream frame: stitch a tile from its two spans' pixels, encode it, frame it.

Each encoder runs in 1, 2, 4, 8 threads (``--threads``), every thread making ``--frames`` frames of
``--tile`` columns from a fixed ``--size`` px image (``serve_load.synthetic_image``), and reports
frames/s and the time one frame costs one thread (µs, 1 thread). Encoders:

- ``pillow``: what the server did before issue 30 (Pillow's JPEG into ``BytesIO``), for comparison;
- ``libjpeg-turbo``: what it does now on the CPU (``protocol.encode_image``, simplejpeg);
- ``nvjpeg`` (with ``--device cuda`` where torchvision's nvJPEG runs): batches of ``--batch`` tiles
  through ``encoders.NvJpegEncoder.encode`` from one thread, as the server does.

Threads scale only as far as each frame's work runs without the GIL: frames/s at N threads over
frames/s at 1 thread is that share, capped by the CPU count (printed). What the server's event loop
feels is the second table: while N threads encode, a probe thread (standing in for the loop) sleeps
0.5 ms over and over and times how late it gets the GIL back (p50 / p99 µs; "0 threads": the
machine alone). Other processes on the CPUs inflate both tables alike; compare rows of one run.

    python -m soat.bench.frame_encode --size 256 --threads 1,2,4,8 [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from soat.bench.serve_load import synthetic_image
from soat.runtime.endless import column_pieces, span_columns, stitch
from soat.runtime.files import atomic_output
from soat.runtime.images import to_uint8
from soat.serve.protocol import JPEG_QUALITY, encode_image, frame_header


def pillow_jpeg(pixels: np.ndarray) -> bytes:
    """The server's JPEG before issue 30: Pillow, quality ``JPEG_QUALITY``, into memory."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def tile_source(size: int, tile: int):
    """``() -> [R, tile, 3]`` stitched as the server stitches a tile from its spans' pixels (the synthetic image
    stands in for every span); the tile starts half-way into span 1, so it straddles two spans."""
    image = to_uint8(synthetic_image(size))[0]
    pieces = column_pieces(size, span_columns(size, 0)[1] + size // 2, tile)
    parts = [np.ascontiguousarray(image[:, slice(*span_columns(size, p.index))]) for p in pieces]
    return lambda: stitch(size, pieces, parts, tile)


def frames_per_s(encode, tile, threads: int, frames: int) -> float:
    """Frames/s of ``threads`` threads, each making ``frames`` frames (stitch, ``encode``, header)."""
    def work(_):
        for k in range(frames):
            frame_header(k, 0, 0, "jpeg") + encode(tile())

    work(0)  # warm: first-call setup out of the clock
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(work, range(threads)))
        return threads * frames / (time.perf_counter() - t0)


PROBE_SLEEP_S = 0.0005


def loop_lag_us(encode, tile, threads: int, seconds: float) -> tuple[float, float]:
    """(p50, p99) µs by which a 0.5 ms sleep overshoots while ``threads`` threads encode frames nonstop."""
    stop = threading.Event()

    def work():
        while not stop.is_set():
            encode(tile())

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    lags = []
    try:
        deadline = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < deadline:
            time.sleep(PROBE_SLEEP_S)
            lags.append(time.perf_counter() - t0 - PROBE_SLEEP_S)
    finally:
        stop.set()
        for w in workers:
            w.join()
    return tuple(1e6 * float(np.percentile(lags, q)) for q in (50, 99))


def nvjpeg_tiles_per_s(tile, batch: int, rounds: int) -> tuple[float, float]:
    """(tiles/s, ms per batch) of ``NvJpegEncoder.encode`` on batches of ``batch`` tiles."""
    import torch

    from soat.serve.encoders import NvJpegEncoder, nvjpeg_problem
    problem = nvjpeg_problem(torch.device("cuda"))
    if problem:
        raise SystemExit(f"nvjpeg: {problem}")
    encoder = NvJpegEncoder(None, torch.device("cuda"))
    try:
        tiles = [tile() for _ in range(batch)]
        encoder.encode(tiles)
        t0 = time.perf_counter()
        for _ in range(rounds):
            encoder.encode([tile() for _ in range(batch)])
        took = (time.perf_counter() - t0) / rounds
    finally:
        encoder.close()
    return batch / took, 1000 * took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the size)")
    p.add_argument("--threads", default="1,2,4,8")
    p.add_argument("--frames", type=int, default=200, help="frames per thread")
    p.add_argument("--device", default="cpu", help="cuda: also nvJPEG batches")
    p.add_argument("--batch", type=int, default=64, help="tiles per nvJPEG batch")
    p.add_argument("--probe-s", type=float, default=2.0, help="seconds of the event-loop probe per row")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tile = tile_source(args.size, args.tile or args.size)
    threads = [int(t) for t in args.threads.split(",")]
    print(f"{args.size} px, {args.tile or args.size}-column JPEG tiles (quality {JPEG_QUALITY}), {os.cpu_count()} CPUs")
    print("| encoder | µs per frame (1 thread) | " + " | ".join(f"frames/s, {n} threads" for n in threads) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in threads) + " |")
    results = {}
    encoders = (("pillow", pillow_jpeg), ("libjpeg-turbo", lambda px: encode_image(px, "jpeg")))
    for name, encode in encoders:
        rates = [frames_per_s(encode, tile, n, args.frames) for n in threads]
        results[name] = {"frames_per_s": dict(zip(map(str, threads), rates))}
        print(f"| {name} | {1e6 / rates[0]:.0f} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |", flush=True)
    idle = loop_lag_us(None, tile, 0, args.probe_s)
    print(f"\nevent-loop probe: GIL back after a 0.5 ms sleep, late by p50 / p99 µs (0 threads: {idle[0]:.0f} / "
          f"{idle[1]:.0f})")
    print("| encoder | " + " | ".join(f"{n} threads" for n in threads) + " |")
    print("| --- | " + " | ".join("---" for _ in threads) + " |")
    for name, encode in encoders:
        lags = [loop_lag_us(encode, tile, n, args.probe_s) for n in threads]
        results[name]["loop_lag_us"] = {str(n): lag for n, lag in zip(threads, lags)}
        print(f"| {name} | " + " | ".join(f"{a:.0f} / {b:.0f}" for a, b in lags) + " |", flush=True)
    results["loop_lag_us_idle"] = idle
    if args.device.startswith("cuda"):
        rate, ms = nvjpeg_tiles_per_s(tile, args.batch, max(1, args.frames // args.batch))
        results["nvjpeg"] = {"tiles_per_s": rate, "ms_per_batch": ms, "batch": args.batch}
        print(f"nvjpeg: {rate:,.0f} tiles/s in batches of {args.batch} ({ms:.2f} ms a batch, one thread)")
    if args.json:
        with atomic_output(args.json) as tmp, open(tmp, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
