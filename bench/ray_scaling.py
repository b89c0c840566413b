"""Columns/s of ``soat serve --ray`` with 1, 2, 4, ... replicas and concurrent stream clients.

Starts its own local Ray instance, deploys the panorama app with each replica count in
turn (``ray_app.application``), opens ``--clients`` WebSocket streams through Serve's proxy
(each a different seed, so no span is shared between clients) and counts the columns
received in a fixed window after a warm-up. A ``plain`` row runs the same app without Ray
(``background_server``, one torch thread) in this process for the proxy's cost.

    python -m soat.bench.ray_scaling --replicas 1,2,4 --clients 8 --size 64 --seconds 20
    python -m soat.bench.ray_scaling --device cuda --gpus-per-replica 1 --replicas 1,2,4,8 --size 256
    python -m soat.bench.ray_scaling --no-ray --device cuda --dtype fp16 --size 256 --clients 1,4,16

Prints a Markdown table (and writes ``--csv``). Each CPU replica gets one CPU and one
torch thread (Ray sets OMP_NUM_THREADS to the replica's CPUs).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import time
from collections import Counter
from dataclasses import dataclass

from websockets.asyncio.client import connect

from soat.serve.protocol import unpack_frame
from soat.serve.replica import ReplicaOptions

CREDIT = 4  # frames each client keeps requested (the server's per-stream pipeline depth)
STAGGER_S = 0.25  # between client arrivals (all within the warm-up)


@dataclass
class Row:
    setup: str
    replicas: int
    clients: int
    columns: int
    seconds: float
    streams_per_replica: str

    @property
    def columns_per_s(self) -> float:
        return self.columns / self.seconds


async def _client(url: str, seed: int, tile: int, start: float, stop: float, counts: list, index: int,
                  replicas: list) -> None:
    """One viewer: keeps ``CREDIT`` frames requested; counts the columns that arrive in ``[start, stop)``."""
    await asyncio.sleep(index * STAGGER_S)  # viewers arrive one by one, so Serve sees each replica's load
    async with connect(f"{url}/api/stream?seed={seed}&tile={tile}&format=jpeg", max_size=None) as ws:
        replicas[index] = ws.response.headers.get("x-soat-replica", "plain")
        await ws.recv()  # hello
        await ws.send(json.dumps({"credit": CREDIT}))
        while time.monotonic() < stop:
            _, _, width, _, _ = unpack_frame(await asyncio.wait_for(ws.recv(), 120))
            if time.monotonic() >= start:
                counts[index] += width
            await ws.send(json.dumps({"credit": 1}))


def measure(base_url: str, clients: int, tile: int, warmup_s: float, seconds: float, seed0: int) -> tuple[int, str]:
    """Total columns received by ``clients`` streams in ``seconds`` after ``warmup_s``; streams per replica."""
    ws_url = base_url.replace("http://", "ws://")
    counts, replicas = [0] * clients, [""] * clients

    async def go():
        start = time.monotonic() + warmup_s
        await asyncio.gather(*(_client(ws_url, seed0 + i, tile, start, start + seconds, counts, i, replicas)
                               for i in range(clients)))

    asyncio.run(go())
    spread = "/".join(str(n) for _, n in Counter(replicas).most_common())
    return sum(counts), spread


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
            columns, spread = measure(base, n, args.tile or args.size, args.warmup, args.seconds, 100 * k)
            rows.append(Row("plain (no Ray)", 1, n, columns, args.seconds, spread))
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
            columns, spread = measure(f"http://127.0.0.1:{port}", clients, args.tile or args.size,
                                      args.warmup, args.seconds, 1000 * (k + 1))
            rows.append(Row("Ray Serve", n, clients, columns, args.seconds, spread))
            print(_table([rows[-1]]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _table(rows: list[Row]) -> str:
    lines = ["| setup | replicas | clients | columns/s | streams per replica |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.setup} | {r.replicas} | {r.clients} | {r.columns_per_s:,.0f} | {r.streams_per_replica} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="random:0")
    p.add_argument("--size", type=int, default=64, help="model size (a checkpoint's own size)")
    p.add_argument("--channel-multiplier", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--replicas", default="1,2,4", help="comma list of replica counts")
    p.add_argument("--clients", default="8", help="comma list of concurrent stream counts (plain runs each; "
                                                 "Ray runs the largest)")
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the model size)")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--no-plain", action="store_true", help="skip the run without Ray")
    p.add_argument("--no-ray", action="store_true", help="only the run without Ray (no Ray needed)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    options = ReplicaOptions(checkpoint=args.checkpoint, size=args.size, channel_multiplier=args.channel_multiplier,
                             device=args.device, dtype=args.dtype)
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
            w.writerow(["setup", "replicas", "clients", "columns", "seconds", "columns_per_s", "streams_per_replica"])
            w.writerows([r.setup, r.replicas, r.clients, r.columns, r.seconds, round(r.columns_per_s, 1),
                         r.streams_per_replica] for r in rows)


if __name__ == "__main__":
    main()
