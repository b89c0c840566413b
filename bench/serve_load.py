"""Load generator for ``soat serve``: N stream clients in their own processes, tiles/s and frame latency.

Clients run in ``--processes`` worker processes (never in the server's), each stream on its
own seed (so every tile is new work for the server). A client either keeps ``--credit`` frames
requested (unthrottled: as fast as the server delivers), or, with ``--rate C``, asks for each
frame when a viewer playing C columns/s needs it (one credit per frame, at its due time).
A frame's latency is from the credit that asked for it to its arrival. Every frame's sequence
number and column are checked: a frame out of order or a gap counts as an order error.

``--crowd N`` (after the ``--clients`` runs; ``--clients 0`` skips them) runs N viewers that pan
like people (``run_crowd``): bursts of ``BURST_SPEEDS`` columns/s for ``BURST_S`` seconds, pauses of
``PAUSE_S``, now and then a new seed (from column 0) or a jump far ahead, each a new stream. A viewer
keeps credit for what its canvas (``--canvas`` columns) will show next, as the browser viewer does:
up to ``BUFFER_VIEWS`` canvases beyond its right edge. It reports, per viewer and overall, the time
from each connection to its first tile, frame latency p50 / p99 / max and the seconds its view
stood still during a burst for want of columns (stalls).

    # against a running server
    python -m soat.bench.serve_load --url http://127.0.0.1:8765 --clients 16 --seconds 20
    # start the server too (its flags after --serve), stop it at the end
    python -m soat.bench.serve_load --serve "--device cuda --dtype fp16" --clients 50 --rate 240
    python -m soat.bench.serve_load --serve "--device cuda --dtype fp16" --clients 16 --crowd 100 --processes 16

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

from soat.runtime.files import atomic_output

ONE_HOST_STREAMS = 128  # stream caps (per process, per client) of the servers a load run starts: every client is this host
BURST_SPEEDS = (500.0, 1000.0)  # columns/s of a viewer's pan (uniform)
BURST_S = (0.5, 3.0)  # how long a pan lasts (uniform)
PAUSE_S = (0.5, 3.0)  # how long a viewer looks before panning again (uniform)
NEW_SEED_P = 0.15  # after a pause, the chance that the viewer picks another seed (from column 0)
JUMP_P = 0.05  # after a pause, the chance that it jumps 10^4 to 10^6 columns ahead
BUFFER_VIEWS = 2  # canvases of columns a viewer asks for beyond its right edge (as viewer.js)
TICK_S = 0.02  # a viewer's animation step


@dataclass
class ClientResult:
    frames: int = 0  # in the measured window (tiles; ``batch`` to a message)
    messages: int = 0  # WebSocket messages, in the measured window
    bytes: int = 0  # of those messages
    columns: int = 0
    latencies_ms: list = field(default_factory=list)
    first_frame_ms: float | None = None  # connect to the first frame (warm-up included)
    order_errors: int = 0
    error: str | None = None
    replica: str = ""  # the x-soat-replica header of its stream
    direct: bool = False  # whether the stream went straight to its replica (``serve/client.py``)


class Rates:
    """Per-second rates of a measured window (``frames``, ``messages``, ``bytes``, ``columns`` over ``seconds``)."""
    frames: int
    messages: int
    bytes: int
    columns: int
    seconds: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def columns_per_s(self) -> float:
        return self.columns / self.seconds

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def megabytes_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds


@dataclass
class LoadResult(Rates):
    clients: int
    rate: float | None  # columns/s per client, None: unthrottled
    seconds: float
    size: int
    tile: int
    frames: int
    messages: int
    bytes: int
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
    direct_clients: int = 0  # clients whose stream went straight to its replica

    @property
    def new_tiles_per_s(self) -> float:
        return self.columns / self.size / self.seconds


async def _client(url: str, seed: int, tile: int, fmt: str, rate: float | None, credit: int,
                  start: float, stop: float, delay: float = 0.0, x: int = 0, batch: int = 1,
                  direct: bool = False) -> ClientResult:
    from soat.serve.client import Route, open_stream
    from soat.serve.protocol import unpack_message
    out = ClientResult()
    await asyncio.sleep(delay)
    t_connect = time.monotonic()
    try:
        async with open_stream(Route(url, seed, direct), x, tile, fmt, batch) as (ws, replica):
            out.direct = replica is not None
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
                    frames = unpack_message(message)
                    for seq, col, width, _, _ in frames:
                        if (seq, col) != (seq_next, col_next):
                            out.order_errors += 1
                        seq_next, col_next = seq + 1, col + width
                    if out.first_frame_ms is None:
                        out.first_frame_ms = 1000 * (now - t_connect)
                    latency = 1000 * (now - asked.popleft())
                    if now >= start:
                        out.frames += len(frames)
                        out.messages += 1
                        out.bytes += len(message)
                        out.columns += sum(width for _, _, width, _, _ in frames)
                        out.latencies_ms.append(latency)
                    if not rate:
                        await grant(1)
            finally:
                if pacer is not None:
                    pacer.cancel()
    except Exception as exc:  # counted, reported; the run goes on
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def _clients(url: str, seeds: list[int], args: dict, start: float, stop: float) -> list:
    """A process's share of ``run_load``'s clients."""
    return await asyncio.gather(*(_client(url, s, args["tile"], args["format"], args["rate"], args["credit"],
                                          start, stop, args["stagger"] * (s - args["seed0"]), batch=args["batch"],
                                          direct=args["direct"]) for s in seeds))


def _process(share_of, url: str, share: list[int], args: dict, go_event, times, queue) -> None:
    """One client process: ``share_of(url, share, args, start, stop)`` (its clients, on one event loop),
    started when every process is up."""
    import websockets.asyncio.client  # noqa: F401  (imports before the clock starts)

    import soat.serve.protocol  # noqa: F401
    queue.put("ready")
    go_event.wait()
    offset = time.monotonic() - time.time()
    start, stop = times[0] + offset, times[1] + offset
    queue.put([asdict(r) for r in asyncio.run(share_of(url, share, args, start, stop))])


def _in_processes(share_of, base_url: str, shares: list[list[int]], args: dict, warmup: float,
                  seconds: float) -> list[dict]:
    """Run ``share_of`` for each share in a spawned process of its own; the clock starts once all are up,
    the measured window ``warmup`` later, for ``seconds``. Returns every client's result (as dicts)."""
    ctx = mp.get_context("spawn")
    queue, go_event, times = ctx.Queue(), ctx.Event(), ctx.Array("d", 2)
    procs = [ctx.Process(target=_process, args=(share_of, base_url, share, args, go_event, times, queue), daemon=True)
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
            results += queue.get(timeout=warmup + seconds + 120)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    return results


def info(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/api/info", timeout=30) as r:
        return json.loads(r.read())


def run_load(base_url: str, clients: int, seconds: float, warmup: float = 3.0, processes: int = 4,
             rate: float | None = None, credit: int = 8, tile: int | None = None, fmt: str = "jpeg",
             seed0: int = 1000, late_ms: float = 100.0, stagger_s: float = 0.0, batch: int = 1,
             direct: bool = False) -> LoadResult:
    """Run ``clients`` streams against ``base_url`` for ``warmup + seconds``; the numbers of the last ``seconds``.

    Client k (seed ``seed0 + k``) connects ``k * stagger_s`` after the start (all within the warm-up
    if ``stagger_s * clients < warmup``), so a load balancer sees the load grow. ``batch``: frames per
    message (one credit each); ``direct``: each stream straight to the replica ``/api/route`` names."""
    size = info(base_url)["size"]
    tile = tile or size
    processes = max(1, min(processes, clients))
    shares = [list(range(seed0 + p, seed0 + clients, processes)) for p in range(processes)]
    args = {"tile": tile, "format": fmt, "rate": rate, "credit": credit, "seed0": seed0, "stagger": stagger_s,
            "batch": batch, "direct": direct}
    results = [ClientResult(**r) for r in _in_processes(_clients, base_url, shares, args, warmup, seconds)]
    latencies = [x for r in results for x in r.latencies_ms]
    p50, p99, most = _p50_p99_max(latencies)
    first_p50, _, first_max = _p50_p99_max([r.first_frame_ms for r in results if r.first_frame_ms is not None])
    return LoadResult(clients=clients, rate=rate, seconds=seconds, size=size, tile=tile,
                      frames=sum(r.frames for r in results), messages=sum(r.messages for r in results),
                      bytes=sum(r.bytes for r in results), columns=sum(r.columns for r in results),
                      order_errors=sum(r.order_errors for r in results),
                      failed_clients=sum(r.error is not None for r in results),
                      p50_ms=p50, p99_ms=p99, max_ms=most, late_frames=sum(x > late_ms for x in latencies),
                      first_frame_p50_ms=first_p50, first_frame_max_ms=first_max,
                      replicas=dict(Counter(r.replica for r in results).most_common()),
                      min_client_frames=min(r.frames for r in results),
                      clients_served=sum(r.first_frame_ms is not None for r in results),
                      direct_clients=sum(r.direct for r in results))


# ---- the crowd: viewers that pan like people ----------------------------------------------------
@dataclass
class ViewerResult:
    viewer: int
    connections: int = 0  # streams opened: the first, then one per seed change or jump
    frames: int = 0
    columns: int = 0
    first_tile_ms: list = field(default_factory=list)  # per connection: connect to its first frame
    latencies_ms: list = field(default_factory=list)  # per frame: credit to arrival
    stall_s: float = 0.0  # time a pan stood still for want of columns
    order_errors: int = 0
    error: str | None = None

    def percentiles(self) -> tuple[float, float, float]:
        """Frame latency p50, p99, max (ms)."""
        return _p50_p99_max(self.latencies_ms)


@dataclass
class CrowdResult:
    viewers: list  # ViewerResult, one per viewer
    seconds: float
    size: int
    tile: int
    canvas: int
    frames: int
    columns: int
    connections: int
    order_errors: int
    failed_viewers: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    first_tile_p50_ms: float
    first_tile_p99_ms: float
    first_tile_max_ms: float
    stall_s: float  # all viewers' stalls together

    @property
    def new_tiles_per_s(self) -> float:
        return self.columns / self.size / self.seconds


def _p50_p99_max(values: list) -> tuple[float, float, float]:
    a = np.array(values or [float("nan")])
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


class _Pan:
    """What a viewer does next: bursts at ``BURST_SPEEDS`` and pauses, and after a pause now and then a new
    seed or a jump (``NEW_SEED_P``, ``JUMP_P``)."""

    def __init__(self, rng: np.random.Generator, now: float):
        self.rng = rng
        self.speed = 0.0
        self.until = now + rng.uniform(*PAUSE_S) / 2  # viewers start looking, not all at once

    def step(self, now: float) -> str | None:
        """Advance the plan to ``now``; returns "seed" or "jump" when the viewer leaves this stream."""
        if now < self.until:
            return None
        if self.speed:  # a burst ends: look for a while
            self.speed, self.until = 0.0, now + self.rng.uniform(*PAUSE_S)
            return None
        self.speed, self.until = self.rng.uniform(*BURST_SPEEDS), now + self.rng.uniform(*BURST_S)
        move = self.rng.random()
        return "seed" if move < NEW_SEED_P else "jump" if move < NEW_SEED_P + JUMP_P else None


async def _viewer(url: str, viewer: int, args: dict, start: float, stop: float) -> ViewerResult:
    """One viewer from ``start`` to ``stop``: a stream at a time, its view panning as ``_Pan`` says."""
    out = ViewerResult(viewer)
    rng = np.random.default_rng(args["seed0"] + viewer)
    seed, x = args["seed0"] + viewer, int(rng.integers(0, 100_000))
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    pan = _Pan(rng, time.monotonic())
    try:
        while time.monotonic() < stop:
            move, view = await _watch(url, seed, x, args, pan, stop, out)
            if move == "seed":
                seed, x = int(rng.integers(0, 2 ** 32)), 0
            elif move == "jump":
                x = view + int(rng.integers(10_000, 1_000_000))
    except Exception as exc:  # counted, reported; the run goes on
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def _watch(url: str, seed: int, x: int, args: dict, pan: _Pan, stop: float,
                 out: ViewerResult) -> tuple[str | None, int]:
    """One stream of a viewer, until ``pan`` leaves it or ``stop``: returns the move and the view's column."""
    from websockets.asyncio.client import connect

    from soat.serve.client import OPEN_TIMEOUT_S, stream_url
    from soat.serve.protocol import unpack_frame
    tile, canvas = args["tile"], args["canvas"]
    t_connect = time.monotonic()
    async with connect(stream_url(url, seed, x, tile, args["format"]), max_size=None, open_timeout=OPEN_TIMEOUT_S) as ws:
        out.connections += 1
        max_credit = json.loads(await ws.recv())["max_credit"]
        asked: deque[float] = deque()  # when each outstanding frame was asked for
        view, received, requested, seq_next = float(x), x, x, 0
        first = True
        last = time.monotonic()
        while (now := time.monotonic()) < stop:
            move = pan.step(now)
            if move is not None:
                return move, int(view)
            want = pan.speed * (now - last)  # the view follows the pan as far as columns have arrived
            shown = min(want, max(0.0, received - canvas - view))
            view += shown
            if want > 0 and shown < want:
                out.stall_s += now - last
            last = now
            n = min(max_credit - len(asked), -(-(int(view) + (1 + BUFFER_VIEWS) * canvas - requested) // tile))
            if n > 0:
                asked.extend([now] * n)
                requested += n * tile
                await ws.send(json.dumps({"credit": n}))
            try:
                message = await asyncio.wait_for(ws.recv(), TICK_S)
            except asyncio.TimeoutError:
                continue
            arrived = time.monotonic()
            seq, col, width, _, _ = unpack_frame(message)
            if (seq, col) != (seq_next, received):
                out.order_errors += 1
            seq_next, received = seq + 1, col + width
            if first:
                out.first_tile_ms.append(1000 * (arrived - t_connect))
                first = False
            out.frames += 1
            out.columns += width
            out.latencies_ms.append(1000 * (arrived - asked.popleft()))
    return None, int(view)


async def _viewers(url: str, ids: list[int], args: dict, start: float, stop: float) -> list:
    """A process's share of ``run_crowd``'s viewers, each starting within ``args["ramp_s"]`` of ``start``."""
    ramp = args["ramp_s"] / max(1, args["viewers"])
    return await asyncio.gather(*(_viewer(url, i, args, start + i * ramp, stop) for i in ids))


def run_crowd(base_url: str, viewers: int, seconds: float, processes: int = 4, seed0: int = 100_000,
              canvas: int = 1024, tile: int | None = None, fmt: str = "jpeg", ramp_s: float = 2.0) -> CrowdResult:
    """``viewers`` panning viewers (``_Pan``) against ``base_url`` in ``processes`` processes of their own, for
    ``seconds``; viewer k starts ``k * ramp_s / viewers`` after the start. Everything from the first connection
    on counts (a crowd has no warm-up: its first tiles are part of what it sees)."""
    size = info(base_url)["size"]
    tile = tile or size
    processes = max(1, min(processes, viewers))
    shares = [list(range(p, viewers, processes)) for p in range(processes)]
    args = {"tile": tile, "format": fmt, "canvas": canvas, "seed0": seed0, "ramp_s": ramp_s, "viewers": viewers}
    results = sorted((ViewerResult(**r) for r in _in_processes(_viewers, base_url, shares, args, 0.0, seconds)),
                     key=lambda r: r.viewer)
    p50, p99, most = _p50_p99_max([x for r in results for x in r.latencies_ms])
    f50, f99, fmax = _p50_p99_max([x for r in results for x in r.first_tile_ms])
    return CrowdResult(viewers=results, seconds=seconds, size=size, tile=tile, canvas=canvas,
                       frames=sum(r.frames for r in results), columns=sum(r.columns for r in results),
                       connections=sum(r.connections for r in results),
                       order_errors=sum(r.order_errors for r in results),
                       failed_viewers=sum(r.error is not None for r in results), p50_ms=p50, p99_ms=p99, max_ms=most,
                       first_tile_p50_ms=f50, first_tile_p99_ms=f99, first_tile_max_ms=fmax,
                       stall_s=sum(r.stall_s for r in results))


CROWD_HEADER = ("| viewers | streams | new tiles/s | p50 ms | p99 ms | max ms | first tile p50 / p99 / max ms "
                "| stalls s | order errors | failed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
VIEWER_HEADER = ("| viewer | streams | frames | p50 ms | p99 ms | max ms | first tiles ms | stalls s |\n"
                 "| --- | --- | --- | --- | --- | --- | --- | --- |")


def crowd_row(r: CrowdResult) -> str:
    return (f"| {len(r.viewers)} | {r.connections} | {r.new_tiles_per_s:,.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.max_ms:.1f} | {r.first_tile_p50_ms:.0f} / {r.first_tile_p99_ms:.0f} / {r.first_tile_max_ms:.0f} "
            f"| {r.stall_s:.1f} | {r.order_errors} | {r.failed_viewers} |")


def viewer_row(v: ViewerResult) -> str:
    p50, p99, most = v.percentiles()
    return (f"| {v.viewer} | {v.connections} | {v.frames} | {p50:.1f} | {p99:.1f} | {most:.1f} "
            f"| {', '.join(f'{t:.0f}' for t in v.first_tile_ms)} | {v.stall_s:.1f} |"
            + (f" {v.error}" if v.error else ""))


HEADER = ("| clients | columns/s each | new tiles/s | columns/s | p50 ms | p99 ms | max ms | late | order errors "
          "| failed | first frame p50 / max ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def row(r: LoadResult) -> str:
    return (f"| {r.clients} | {r.rate or 'unthrottled'} | {r.new_tiles_per_s:,.1f} | {r.columns_per_s:,.0f} "
            f"| {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | {r.late_frames}/{r.frames} | {r.order_errors} "
            f"| {r.failed_clients} | {r.first_frame_p50_ms:.0f} / {r.first_frame_max_ms:.0f} |")


def start_server(flags: str, port: int, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """``soat serve FLAGS --port PORT`` in a subprocess; returns once it prints its URL. Every client of a
    load run comes from this host, so the stream limits (per process and per client address) are raised to
    ``ONE_HOST_STREAMS`` unless FLAGS set them."""
    flags = shlex.split(flags)
    for limit in ("--max-streams", "--max-streams-per-client"):
        if limit not in flags:
            flags += [limit, str(ONE_HOST_STREAMS)]
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


def synthetic_image(size: int):
    """A fixed ``[1, 3, R, 2R]`` image in [-1, 1] (colour ramps and noise) standing in for a span's pixels."""
    import torch
    ramp = torch.linspace(-1, 1, 2 * size)
    image = torch.stack([ramp.expand(size, -1), ramp.flip(0).expand(size, -1), ramp[:size, None].expand(-1, 2 * size)])
    return (image + 0.1 * torch.randn(3, size, 2 * size, generator=torch.Generator().manual_seed(0)))[None]


class SyntheticSpans:
    """A free span source (``batcher.SpanSource``) for ``size`` px models: every span is cut from one fixed image
    (``synthetic_image``), so a server using it measures its host path alone (batching, uint8, stitching,
    encoding, framing, sending). Picklable, for Ray replicas (``ray_scaling --synthetic``)."""

    def __init__(self, size: int):
        self.size = size
        self.image = synthetic_image(size)

    def __call__(self, G, keys) -> list:
        from soat.runtime.endless import span_columns
        return [self.image[..., slice(*span_columns(self.size, k.index))].clone() for k in keys]


def synthetic_server(size: int, encoders: int | None, max_batch: int):
    """An in-process server whose generator is free (``SyntheticSpans``): the host path of one process alone."""
    import soat
    from soat.serve.app import background_server, create_app
    G = soat.load("random:0", size=size, channel_multiplier=1)
    return background_server(create_app(G, truncation=1.0, max_batch=max_batch, encoders=encoders,
                                        span_source=SyntheticSpans(size), max_streams=ONE_HOST_STREAMS,
                                        max_streams_per_client=ONE_HOST_STREAMS))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one with --serve's flags)")
    p.add_argument("--serve", default="", metavar="FLAGS", help="flags of the `soat serve` this run starts")
    p.add_argument("--port", type=int, default=8765, help="port of the server --serve starts")
    p.add_argument("--clients", default="16", help="comma list of client counts, one run each (0: none)")
    p.add_argument("--rate", type=float, default=None, help="columns/s each client plays (default: unthrottled)")
    p.add_argument("--credit", type=int, default=8, help="frames an unthrottled client keeps requested")
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the model size)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "png", "webp"])
    p.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--late-ms", type=float, default=100.0, help="a frame slower than this counts as late")
    p.add_argument("--crowd", type=int, default=0, metavar="N", help="then N viewers panning like people, for "
                   "--seconds (no warm-up: their first tiles count)")
    p.add_argument("--crowd-processes", type=int, default=None, help="processes of the crowd (default --processes)")
    p.add_argument("--canvas", type=int, default=1024, help="columns a crowd viewer shows (the viewer's default)")
    p.add_argument("--ramp", type=float, default=2.0, help="seconds over which the crowd's viewers arrive")
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
    """One run per client count against ``url`` (a Markdown row each), the crowd (its row, then its ten
    slowest viewers), then the server's batch sizes; ``--json``: every number, each viewer's too."""
    i = info(url)
    print(f"server: {i['size']} px, {i['backend']}, {i['device']}, {i['dtype']}, max_batch {i['max_batch']}, "
          f"encoders {i['encoders']}, JPEG by {i['jpeg_encoder']}; clients: {args.processes} processes of their "
          f"own on the server's host ({os.cpu_count()} CPUs)", flush=True)
    results = []
    counts = [n for n in (int(c) for c in args.clients.split(",")) if n > 0]
    if counts:
        print(HEADER, flush=True)
    for k, n in enumerate(counts):
        r = run_load(url, n, args.seconds, args.warmup, args.processes, args.rate, args.credit, args.tile,
                     args.format, seed0=1000 * (k + 1), late_ms=args.late_ms)
        results.append({**asdict(r), "new_tiles_per_s": r.new_tiles_per_s})
        print(row(r), flush=True)
    if args.crowd:
        processes = args.crowd_processes or args.processes
        print(f"crowd: {args.crowd} viewers in {processes} processes of their own on the server's host", flush=True)
        crowd = run_crowd(url, args.crowd, args.seconds, processes, canvas=args.canvas, tile=args.tile,
                          fmt=args.format, ramp_s=args.ramp)
        results.append({**asdict(crowd), "new_tiles_per_s": crowd.new_tiles_per_s})
        print(CROWD_HEADER, crowd_row(crowd), "", "slowest viewers (by p99):", VIEWER_HEADER, sep="\n")
        for v in sorted(crowd.viewers, key=lambda v: -v.percentiles()[1])[:10]:
            print(viewer_row(v))
        print(flush=True)
    after = info(url)
    print(f"server batches: {after['batches']}, spans {after['spans']}, "
          f"mean batch {after['spans'] / max(1, after['batches']):.1f}, largest {after['largest_batch']}")
    if args.json:
        with atomic_output(args.json) as tmp, open(tmp, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
