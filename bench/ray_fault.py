"""The fault drill for ``soat serve --ray``: kill the replica serving a stream, resume on another.

One client streams tiles of one panorama through Serve's proxy, or with ``direct`` straight from the
replica that ``/api/route`` ranks first (``serve/client.py``); after ``kill_after`` frames the replica
that served them is killed (``ray.kill``, no restart). The client then does what the viewer does: it
reconnects with ``x`` = the column after the last one it received (a direct client at the next
replica of its route), and goes on until ``total`` columns have arrived. The
drill returns every frame (column, width, pixels), the replicas that served the two connections,
whether each went direct, and the time from the kill to the first frame on the new connection.

Used by ``tests/test_ray_serve.py`` (CPU replicas, pixels checked against the generator) and
by ``bench/ray_scaling.py --fault`` (GPU replicas, gap and resume time measured).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class Drill:
    """What one drill saw: frames in arrival order, the replicas, closes and the resume wait."""

    frames: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)
    direct: list[bool] = field(default_factory=list)  # per connection: straight to its replica
    closes: int = 0
    resume_ms: float = float("nan")  # from the kill to the first frame on the new connection

    @property
    def contiguous(self) -> bool:
        """Every frame starts where the one before it ended: no gap, no overlap."""
        return all(c + w == n for (c, w, _), (n, _, _) in zip(self.frames, self.frames[1:]))


def wait_for_replicas(base_url: str, n: int, timeout: float, gone: Sequence[str] = ()) -> None:
    """Until ``/api/route`` ranks ``n`` replicas (alive and warm), none of them ``gone`` (killed: Ray drops a
    killed actor's name a moment later, and Serve replaces it, which takes a while), and every replica's routes
    know them all."""
    from soat.serve.client import ranked_replicas
    from soat.serve.ray_app import ROUTES_TTL_S
    deadline = time.monotonic() + timeout
    while True:
        names = {name for name, _ in asyncio.run(ranked_replicas(base_url, 0))}
        if len(names) >= n and not names & set(gone):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} replicas besides {list(gone)} did not take direct streams within {timeout:.0f} s: "
                               f"{sorted(names)}")
        time.sleep(0.2)
    time.sleep(ROUTES_TTL_S)


def decode(payload: bytes) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


async def kill_mid_stream(base_url: str, seed: int, start: int, tile: int, total: int, kill_after: int,
                          timeout: float, fmt: str = "png", direct: bool = False) -> Drill:
    """Stream ``total`` columns from ``start``, killing the serving replica after ``kill_after`` frames."""
    import ray
    from websockets.exceptions import ConnectionClosed

    from soat.serve.client import Route, open_stream
    from soat.serve.protocol import unpack_frame
    drill, x, killed_at, route = Drill(), start, None, Route(base_url, seed, direct)
    while not (drill.closes and x >= start + total):  # the first connection runs until the kill closes it
        async with open_stream(route, x, tile, fmt) as (ws, replica):
            drill.replicas.append(ws.response.headers["x-soat-replica"])
            drill.direct.append(replica is not None)
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if hello.get("type") != "hello":
                raise RuntimeError(f"the stream did not start with its hello message: {hello}")
            await ws.send(json.dumps({"credit": 4}))  # frames in flight when the replica dies
            try:
                while not (drill.closes and x >= start + total):
                    _, col, width, _, payload = unpack_frame(await asyncio.wait_for(ws.recv(), timeout))
                    if killed_at is not None and drill.closes and np.isnan(drill.resume_ms):
                        drill.resume_ms = 1e3 * (time.perf_counter() - killed_at)
                    drill.frames.append((col, width, decode(payload)))
                    x = col + width  # the resume protocol: reconnect at the column after the last one
                    await ws.send(json.dumps({"credit": 1}))
                    if len(drill.frames) == kill_after:
                        killed_at = time.perf_counter()
                        ray.kill(ray.get_actor(drill.replicas[-1], namespace="serve"), no_restart=True)
            except ConnectionClosed:
                drill.closes += 1
                route.lose(replica)
    return drill
