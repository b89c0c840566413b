"""Load generator for ``soat serve``: N stream clients in their own processes, tiles/s and frame latency.

Clients run in ``--processes`` worker processes (never in the server's), each stream on its
own seed (so every tile is new work for the server). A client either keeps ``--credit`` frames
requested (unthrottled: as fast as the server delivers), or, with ``--rate C``, asks for each
frame when a viewer playing C columns/s needs it (one credit per frame, at its due time).
A frame's latency is from the credit that asked for it to its arrival. Every frame's sequence
number and column are checked: a frame out of order or a gap counts as an order error.

    # against a running server
    python -m soat.bench.serve_load --url http://127.0.0.1:8765 --clients 16 --seconds 20
    # start the server too (its flags after --serve), stop it at the end
    python -m soat.bench.serve_load --serve "--device cuda --dtype fp16" --clients 50 --rate 240

Prints a Markdown row per run (``--json`` also writes the numbers). "new tiles/s" counts
R-column tiles (R the model size), whatever ``--tile`` the frames have.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

import numpy as np

ONE_HOST_STREAMS = 64  # the per-client stream cap of the servers a load run starts: all its clients are this host


@dataclass
class ClientResult:
    frames: int = 0  # in the measured window
    columns: int = 0
    latencies_ms: list = field(default_factory=list)
    first_frame_ms: float | None = None  # connect to the first frame (warm-up included)
    order_errors: int = 0
    error: str | None = None
    replica: str = ""  # the x-soat-replica header of its stream


@dataclass
class LoadResult:
    clients: int
    rate: float | None  # columns/s per client, None: unthrottled
    seconds: float
    size: int
    tile: int
    frames: int
    columns: int
    order_errors: int
    failed_clients: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    late_frames: int  # latency over --late-ms
    first_frame_p50_ms: float
    first_frame_max_ms: float
    replicas: dict  # streams per x-soat-replica
    min_client_frames: int  # in the measured window
    clients_served: int  # clients that received at least one frame (warm-up included)

    @property
    def new_tiles_per_s(self) -> float:
        return self.columns / self.size / self.seconds

    @property
    def columns_per_s(self) -> float:
        return self.columns / self.seconds


async def _client(url: str, seed: int, tile: int, fmt: str, rate: float | None, credit: int,
                  start: float, stop: float, delay: float = 0.0, x: int = 0) -> ClientResult:
    from websockets.asyncio.client import connect

    from soat.serve.protocol import unpack_frame
    out = ClientResult()
    await asyncio.sleep(delay)
    t_connect = time.monotonic()
    try:
        async with connect(f"{url}/api/stream?seed={seed}&x={x}&tile={tile}&format={fmt}", max_size=None,
                           open_timeout=60) as ws:
            out.replica = ws.response.headers.get("x-soat-replica", "")
            json.loads(await ws.recv())  # hello
            asked: deque[float] = deque()  # when each outstanding frame was asked for

            async def grant(n: int) -> None:
                asked.extend([time.monotonic()] * n)
                await ws.send(json.dumps({"credit": n}))

            pacer = None
            if rate:
                async def pace() -> None:
                    t0, k = time.monotonic(), 0
                    while time.monotonic() < stop:
                        await asyncio.sleep(max(0.0, t0 + k * tile / rate - time.monotonic()))
                        await grant(1)
                        k += 1
                pacer = asyncio.create_task(pace())
            else:
                await grant(credit)
            seq_next, col_next = 0, x
            try:
                while (remaining := stop - time.monotonic()) > 0:
                    try:
                        message = await asyncio.wait_for(ws.recv(), remaining)
                    except asyncio.TimeoutError:
                        break
                    now = time.monotonic()
                    seq, col, width, _, _ = unpack_frame(message)
                    if (seq, col) != (seq_next, col_next):
                        out.order_errors += 1
                    seq_next, col_next = seq + 1, col + width
                    if out.first_frame_ms is None:
                        out.first_frame_ms = 1000 * (now - t_connect)
                    latency = 1000 * (now - asked.popleft())
                    if now >= start:
                        out.frames += 1
                        out.columns += width
                        out.latencies_ms.append(latency)
                    if not rate:
                        await grant(1)
            finally:
                if pacer is not None:
                    pacer.cancel()
    except Exception as exc:  # counted, reported; the run goes on
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def _process(url: str, seeds: list[int], args: dict, go_event, times, queue) -> None:
    """One client process: its share of the clients, on one event loop, started when every process is up."""
    import websockets.asyncio.client  # noqa: F401  (imports before the clock starts)

    import soat.serve.protocol  # noqa: F401
    queue.put("ready")
    go_event.wait()
    offset = time.monotonic() - time.time()
    start, stop = times[0] + offset, times[1] + offset

    async def go():
        return await asyncio.gather(*(_client(url, s, args["tile"], args["format"], args["rate"], args["credit"],
                                              start, stop, args["stagger"] * (s - args["seed0"])) for s in seeds))

    queue.put([asdict(r) for r in asyncio.run(go())])


def info(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/api/info", timeout=30) as r:
        return json.loads(r.read())


def run_load(base_url: str, clients: int, seconds: float, warmup: float = 3.0, processes: int = 4,
             rate: float | None = None, credit: int = 8, tile: int | None = None, fmt: str = "jpeg",
             seed0: int = 1000, late_ms: float = 100.0, stagger_s: float = 0.0) -> LoadResult:
    """Run ``clients`` streams against ``base_url`` for ``warmup + seconds``; the numbers of the last ``seconds``.

    Client k (seed ``seed0 + k``) connects ``k * stagger_s`` after the start (all within the warm-up
    if ``stagger_s * clients < warmup``), so a load balancer sees the load grow."""
    size = info(base_url)["size"]
    tile = tile or size
    ws_url = base_url.replace("http://", "ws://")
    processes = max(1, min(processes, clients))
    ctx = mp.get_context("spawn")
    queue, go_event, times = ctx.Queue(), ctx.Event(), ctx.Array("d", 2)
    shares = [list(range(seed0 + p, seed0 + clients, processes)) for p in range(processes)]
    procs = [ctx.Process(target=_process, args=(ws_url, share, {"tile": tile, "format": fmt, "rate": rate,
                                                               "credit": credit, "seed0": seed0, "stagger": stagger_s}, go_event, times, queue), daemon=True)
             for share in shares]
    for proc in procs:
        proc.start()
    results = []
    try:
        for _ in procs:
            assert queue.get(timeout=300) == "ready"
        times[0] = time.time() + warmup  # the clients connect now; the window starts after the warm-up
        times[1] = times[0] + seconds
        go_event.set()
        for _ in procs:
            results += [ClientResult(**r) for r in queue.get(timeout=warmup + seconds + 120)]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    lat = np.array([x for r in results for x in r.latencies_ms] or [float("nan")])
    first = np.array([r.first_frame_ms for r in results if r.first_frame_ms is not None] or [float("nan")])
    return LoadResult(clients=clients, rate=rate, seconds=seconds, size=size, tile=tile,
                      frames=sum(r.frames for r in results), columns=sum(r.columns for r in results),
                      order_errors=sum(r.order_errors for r in results),
                      failed_clients=sum(r.error is not None for r in results),
                      p50_ms=float(np.percentile(lat, 50)), p99_ms=float(np.percentile(lat, 99)),
                      max_ms=float(lat.max()), late_frames=int((lat > late_ms).sum()),
                      first_frame_p50_ms=float(np.percentile(first, 50)), first_frame_max_ms=float(first.max()),
                      replicas=dict(Counter(r.replica for r in results).most_common()),
                      min_client_frames=min(r.frames for r in results),
                      clients_served=sum(r.first_frame_ms is not None for r in results))


HEADER = ("| clients | columns/s each | new tiles/s | columns/s | p50 ms | p99 ms | max ms | late | order errors "
          "| failed | first frame p50 / max ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(r: LoadResult) -> str:
    return (f"| {r.clients} | {r.rate or 'unthrottled'} | {r.new_tiles_per_s:,.1f} | {r.columns_per_s:,.0f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | {r.late_frames}/{r.frames} | {r.order_errors} "
            f"| {r.failed_clients} | {r.first_frame_p50_ms:.0f} / {r.first_frame_max_ms:.0f} |")


def start_server(flags: str, port: int, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """``soat serve FLAGS --port PORT`` in a subprocess; returns once it prints its URL. Every client of a
    load run comes from this host, so the per-client stream cap is lifted to the stream limit unless FLAGS
    set it."""
    flags = shlex.split(flags)
    if "--max-streams-per-client" not in flags:
        flags += ["--max-streams-per-client", str(ONE_HOST_STREAMS)]
    cmd = [sys.executable, "-m", "soat.cli", "serve", *flags, "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        sys.stderr.write(line)
        if " at http://" in line:
            url = line.rsplit(" at ", 1)[1].strip().rstrip("/")
            break
        if time.monotonic() > deadline:
            break
    else:
        raise RuntimeError(f"soat serve exited with {proc.wait()}")
    if time.monotonic() > deadline:
        proc.terminate()
        raise RuntimeError(f"soat serve did not start within {timeout_s:.0f} s")
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep draining its log
    return proc, url


def synthetic_server(size: int, encoders: int | None, max_batch: int):
    """An in-process server whose generator is free: spans are a fixed image, so the run measures
    the host path alone (batching, uint8, stitching, encoding, framing, sending) of one process."""
    import torch

    import soat
    from soat.runtime.endless import span_columns
    from soat.serve.app import background_server, create_app
    G = soat.load("random:0", size=size, channel_multiplier=1)
    ramp = torch.linspace(-1, 1, 2 * size)
    image = torch.stack([ramp.expand(size, -1), ramp.flip(0).expand(size, -1), ramp[:size, None].expand(-1, 2 * size)])
    image = (image + 0.1 * torch.randn(3, size, 2 * size, generator=torch.Generator().manual_seed(0)))[None]

    def spans(G, keys):
        return [image[..., slice(*span_columns(size, k.index))].clone() for k in keys]

    return background_server(create_app(G, truncation=1.0, max_batch=max_batch, encoders=encoders, span_source=spans,
                                        max_streams_per_client=ONE_HOST_STREAMS))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one with --serve's flags)")
    p.add_argument("--serve", default="", metavar="FLAGS", help="flags of the `soat serve` this run starts")
    p.add_argument("--port", type=int, default=8765, help="port of the server --serve starts")
    p.add_argument("--clients", default="16", help="comma list of client counts, one run each")
    p.add_argument("--rate", type=float, default=None, help="columns/s each client plays (default: unthrottled)")
    p.add_argument("--credit", type=int, default=8, help="frames an unthrottled client keeps requested")
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the model size)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "png", "webp"])
    p.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--late-ms", type=float, default=100.0, help="a frame slower than this counts as late")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--synthetic", type=int, default=None, metavar="SIZE",
                   help="serve from this process with a free generator of SIZE px: the host path's ceiling")
    p.add_argument("--encoders", type=int, default=None, help="with --synthetic: encoder threads")
    p.add_argument("--max-batch", type=int, default=64, help="with --synthetic: spans per batch")
    args = p.parse_args()
    url = args.url
    with ExitStack() as stack:
        if args.synthetic:
            url = stack.enter_context(synthetic_server(args.synthetic, args.encoders, args.max_batch))
        elif url is None:
            proc, url = start_server(args.serve, args.port)
            stack.callback(lambda: (proc.terminate(), proc.wait(30)))
        _report(url, args)


def _report(url: str, args) -> None:
    """One run per client count against ``url``: a Markdown row each, then the server's batch sizes."""
    i = info(url)
    print(f"server: {i['size']} px, {i['backend']}, {i['device']}, {i['dtype']}, max_batch {i['max_batch']}, "
          f"encoders {i['encoders']}; clients: {args.processes} processes on {os.cpu_count()} CPUs", flush=True)
    print(HEADER, flush=True)
    results = []
    for k, n in enumerate(int(c) for c in args.clients.split(",")):
        r = run_load(url, n, args.seconds, args.warmup, args.processes, args.rate, args.credit, args.tile,
                     args.format, seed0=1000 * (k + 1), late_ms=args.late_ms)
        results.append(r)
        print(row(r), flush=True)
    after = info(url)
    print(f"server batches: {after['batches']}, spans {after['spans']}, "
          f"mean batch {after['spans'] / max(1, after['batches']):.1f}, largest {after['largest_batch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**asdict(r), "new_tiles_per_s": r.new_tiles_per_s} for r in results], f, indent=1)


if __name__ == "__main__":
    main()
