"""Columns/s of ``soat serve --ray`` with 1, 2, 4, ... replicas and concurrent stream clients.

Starts its own local Ray instance, deploys the panorama app with each replica count in
turn (``ray_app.application``), opens ``--clients`` WebSocket streams through Serve's proxy
(each a different seed, so no span is shared between clients; the clients run in
``--processes`` processes of their own, ``serve_load``) and counts the columns received in a
fixed window after a warm-up, with each frame's latency. A ``plain`` row runs the same app without Ray
(``background_server``, one torch thread) in this process for the proxy's cost.

    python -m soat.bench.ray_scaling --replicas 1,2,4 --clients 8 --size 64 --seconds 20
    python -m soat.bench.ray_scaling --device cuda --dtype fp16 --gpus-per-replica 1 --replicas 1,2,4 --size 256 --fault
    python -m soat.bench.ray_scaling --no-ray --device cuda --dtype fp16 --size 256 --clients 1,4,16

Prints a Markdown table (and writes ``--csv``). Each CPU replica gets one CPU and one
torch thread (Ray sets OMP_NUM_THREADS to the replica's CPUs).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import socket
import time
from dataclasses import dataclass

from soat.bench.serve_load import ONE_HOST_STREAMS, LoadResult, run_load
from soat.serve.replica import ReplicaOptions

CREDIT = 8  # frames each client keeps requested
STAGGER_S = 0.25  # between client arrivals (all within the warm-up)


@dataclass
class Row:
    setup: str
    replicas: int
    clients: int
    columns: int
    seconds: float
    streams_per_replica: str
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    order_errors: int = 0

    @property
    def columns_per_s(self) -> float:
        return self.columns / self.seconds


def measure(base_url: str, clients: int, tile: int, warmup_s: float, seconds: float, seed0: int,
            processes: int = 4) -> LoadResult:
    """``clients`` streams (in ``processes`` processes of their own, ``serve_load``) for ``seconds`` after
    ``warmup_s``; viewers arrive ``STAGGER_S`` apart, so Serve sees each replica's load."""
    return run_load(base_url, clients, seconds, max(warmup_s, STAGGER_S * clients + 1), processes, credit=CREDIT,
                    tile=tile, seed0=seed0, stagger_s=STAGGER_S)


def _row(setup: str, replicas: int, r: LoadResult) -> Row:
    spread = "/".join(str(n) for n in r.replicas.values())
    return Row(setup, replicas, r.clients, r.columns, r.seconds, spread, r.p50_ms, r.p99_ms, r.order_errors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_plain(options: ReplicaOptions, args, clients: list[int]) -> list[Row]:
    import torch

    from soat.serve.app import background_server
    from soat.serve.replica import local_identity
    torch.set_num_threads(1)  # as one CPU replica
    G = options.load()
    rows = []
    with background_server(options.app(G, local_identity())) as base:
        for k, n in enumerate(clients):
            r = measure(base, n, args.tile or args.size, args.warmup, args.seconds, 100 * k, args.processes)
            rows.append(_row("plain (no Ray)", 1, r))
            print(_table([rows[-1]]), flush=True)
    return rows


def run_ray(options: ReplicaOptions, args, clients: int) -> list[Row]:
    import ray
    from ray import serve

    from soat.serve.ray_app import application
    counts = [int(n) for n in args.replicas.split(",")]
    cpus = max(counts) + 1 if args.gpus_per_replica == 0 else None
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        for k, n in enumerate(counts):
            t0 = time.monotonic()
            serve.run(application(options, replicas=n, gpus_per_replica=args.gpus_per_replica), name="bench",
                      route_prefix="/")
            print(f"{n} replicas up in {time.monotonic() - t0:.1f} s", flush=True)
            r = measure(f"http://127.0.0.1:{port}", clients, args.tile or args.size, args.warmup, args.seconds,
                        1000 * (k + 1), args.processes)
            rows.append(_row("Ray Serve", n, r))
            print(_table([rows[-1]]), flush=True)
        if args.fault:
            try:
                print(fault_drill(f"http://127.0.0.1:{port}", args.tile or args.size), flush=True)
            except Exception as e:  # the rows measured so far still go to the table and the CSV
                print(f"fault drill failed: {type(e).__name__}: {e}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def fault_drill(base_url: str, tile: int) -> str:
    """Kill the replica serving a stream (``ray_fault``) on the last deployment; one line: the replicas, whether the
    columns stayed contiguous, and how long the client waited from the kill to its next frame."""
    import asyncio

    from soat.bench.ray_fault import kill_mid_stream
    drill = asyncio.run(kill_mid_stream(base_url, seed=9999, start=0, tile=tile, total=40 * tile, kill_after=10,
                                        timeout=60, fmt="jpeg"))
    columns = sum(w for _, w, _ in drill.frames)
    return (f"fault drill: replicas {' -> '.join(drill.replicas)}, {len(drill.frames)} frames, {columns} columns, "
            f"{'contiguous' if drill.contiguous else 'GAP OR OVERLAP'}, closes {drill.closes}, "
            f"kill to next frame {drill.resume_ms:.0f} ms")


def _table(rows: list[Row]) -> str:
    lines = ["| setup | replicas | clients | columns/s | p50 / p99 ms | order errors | streams per replica |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.setup} | {r.replicas} | {r.clients} | {r.columns_per_s:,.0f} | {r.p50_ms:.0f} / {r.p99_ms:.0f} "
              f"| {r.order_errors} | {r.streams_per_replica} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="random:0")
    p.add_argument("--size", type=int, default=64, help="model size (a checkpoint's own size)")
    p.add_argument("--channel-multiplier", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--max-batch", type=int, default=None, help="spans per generator call (default 64 on CUDA, else 16)")
    p.add_argument("--replicas", default="1,2,4", help="comma list of replica counts")
    p.add_argument("--clients", default="8", help="comma list of concurrent stream counts (plain runs each; "
                                                 "Ray runs the largest)")
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the model size)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--no-plain", action="store_true", help="skip the run without Ray")
    p.add_argument("--no-ray", action="store_true", help="only the run without Ray (no Ray needed)")
    p.add_argument("--fault", action="store_true", help="after the last replica count (>= 2), kill the replica "
                                                        "serving a stream and time the resume (ray_fault)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    if args.fault and (args.no_ray or int(args.replicas.split(",")[-1]) < 2):
        p.error("--fault needs Ray and at least 2 replicas in the last --replicas count (one is killed)")
    max_batch = args.max_batch or (64 if args.device.startswith("cuda") else 16)
    options = ReplicaOptions(checkpoint=args.checkpoint, size=args.size, channel_multiplier=args.channel_multiplier,
                             device=args.device, dtype=args.dtype, max_batch=max_batch,
                             max_streams_per_client=ONE_HOST_STREAMS)  # every client is this host
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {options}; "
          f"load average before: {os.getloadavg()}", flush=True)
    clients = [int(n) for n in args.clients.split(",")]
    rows = [] if args.no_plain else run_plain(options, args, clients)
    if not args.no_ray:
        rows += run_ray(options, args, max(clients))
    print(_table(rows))
    print(f"load average after: {os.getloadavg()}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["setup", "replicas", "clients", "columns", "seconds", "columns_per_s", "p50_ms", "p99_ms",
                        "order_errors", "streams_per_replica"])
            w.writerows([r.setup, r.replicas, r.clients, r.columns, r.seconds, round(r.columns_per_s, 1),
                         round(r.p50_ms, 1), round(r.p99_ms, 1), r.order_errors, r.streams_per_replica] for r in rows)


if __name__ == "__main__":
    main()
