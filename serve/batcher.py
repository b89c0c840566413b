"""Dynamic batching of endless-panorama spans across every client of the server.

Each stream asks for the spans under its next tile. Requests that arrive within a
short window (a few milliseconds) are computed together: one ``merge_extension``
call with a batch of B spans on the generator's worker thread, so N viewers cost
one batched call per step instead of N calls. Finished spans go into a bounded LRU
(as uint8 pixels on the host), so viewers at the same place share them. Pending
requests are bounded too: each stream waits on at most a few tiles, and a span that
every waiter has abandoned (its clients disconnected) leaves the queue unless a
batch has already taken it.

The host does as little per span as it can: the batch's contributed columns are
converted to uint8 and laid side by side (``[R, sum of widths, 3]``) on the generator's
device, then copied to the host in one transfer. On CUDA that copy goes into pinned
memory without blocking the worker thread, so up to ``depth`` batches are in flight: the
worker launches the next batch while a finisher thread waits for the previous one's
copy, and encoding (the server's encoder pool) overlaps both. Where the generator replays
CUDA graphs, the runtime runs a batch at one of a few sizes (``G.cuda_graphs.padded_batch``);
the warm-up runs each of them (``G.cuda_graphs.warmup_batches``), so every capture happens
before the first client.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..runtime.endless import Piece, SpanKey, column_pieces, span_columns, spans, stitch
from ..runtime.images import device_uint8
from ..runtime.lru import LRU

if TYPE_CHECKING:
    from ..runtime.generator import Generator

SpanSource = Callable[["Generator", Sequence[SpanKey]], Sequence[torch.Tensor]]  # what computes a batch of spans
RATE_WINDOW_S = 5.0  # generated columns/s is averaged over this many seconds


class _Launched:
    """A batch whose pixels are on their way to the host: ``wait()`` gives one ``[R, w, 3]`` array per span."""

    def __init__(self, pixels: torch.Tensor, widths: list[int], started: float):
        self.widths = widths
        self.started = started
        if pixels.device.type == "cuda":
            self.host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            self.host.copy_(pixels, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host, self.event = pixels, None

    def wait(self) -> list[np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        host = self.host.numpy()
        edges = np.cumsum([0, *self.widths])
        return [host[:, a:b] for a, b in zip(edges[:-1], edges[1:])]


class SpanBatcher:
    """Computes spans of one generator in batches; ``await tile(seed, start, width)`` from any task.

    Args:
        G: the generator.
        worker: the single-thread executor that runs every generator call.
        truncation: psi of the served panoramas.
        max_batch: the most spans in one generator call.
        window_s: how long the first request of a step waits for others to join.
        capacity: spans kept in the LRU (each ``R x (R + R // 2)`` RGB at most).
        depth: batches launched and not yet on the host (more than 1 helps only on CUDA).
        span_source: ``(G, keys) -> [1, 3, R, w]`` images in [-1, 1], one per key: computes a batch
            (default: the runtime's ``spans``; a load test passes a free one).
        on_batch: called with ``(spans, seconds)`` of each batch on the host (the server's metrics).
    """

    def __init__(self, G: Generator, worker: Executor, truncation: float, max_batch: int = 16,
                 window_s: float = 0.004, capacity: int = 256, depth: int = 2, span_source: SpanSource = spans,
                 on_batch: Callable[[int, float], None] = lambda spans, seconds: None):
        self.G = G
        self.on_batch = on_batch
        self.span_source = span_source
        self.worker = worker
        self.truncation = truncation
        self.max_batch = max_batch
        self.window_s = window_s
        self.depth = depth
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="soat-copy")
        self._slots: asyncio.Semaphore | None = None
        self._cache: LRU[SpanKey, np.ndarray] = LRU(capacity)
        self._pending: dict[SpanKey, asyncio.Future] = {}  # queued or being computed
        self._waiters: dict[SpanKey, int] = {}  # tasks awaiting each pending span
        self._queue: list[SpanKey] = []
        self._runner: asyncio.Task | None = None
        self._done: deque[tuple[float, int]] = deque()  # (time, spans) of recent batches
        self.batch_s: float | None = None  # running mean of one batch's time, launch to host
        self.stats = {"batches": 0, "spans": 0, "largest_batch": 0}

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def cached(self) -> int:
        return len(self._cache)

    def columns_per_s(self) -> float:
        """Columns generated per second over the last ``RATE_WINDOW_S`` (all clients)."""
        now = time.monotonic()
        while self._done and now - self._done[0][0] > RATE_WINDOW_S:
            self._done.popleft()
        return sum(n for _, n in self._done) * self.G.size / RATE_WINDOW_S

    def first_tile_eta_s(self) -> float | None:
        """About how long a new stream waits for its first tile now (None before any batch)."""
        if self.batch_s is None:
            return None
        return (1 + len(self._queue) // self.max_batch) * self.batch_s + self.window_s

    async def warm_up(self) -> None:
        """Before the first client: one batch of each size the generator asks for (``warmup_batches``:
        where it replays CUDA graphs every padded size up to ``max_batch``, largest first, so every
        capture happens now, not during a stream; elsewhere one span), which also times a batch for
        ``first_tile_eta_s``."""
        sizes = self.G.cuda_graphs.warmup_batches(self.max_batch)
        first = 0
        for n in sizes:  # seed 0's first spans: real ones, cached for its first viewers
            await asyncio.gather(*(self.span(SpanKey(0, first + i, self.truncation)) for i in range(n)))
            first += n

    async def tile(self, seed: int, start: int, width: int) -> np.ndarray:
        """Columns ``[start, start + width)`` of panorama ``seed``: ``[R, width, 3]`` uint8."""
        return stitch(self.G.size, *await self.tile_parts(seed, start, width), width)

    async def tile_parts(self, seed: int, start: int, width: int) -> tuple[list[Piece], list[np.ndarray]]:
        """The pieces of a tile and their spans' pixels: ``stitch(R, pieces, parts, width)`` makes the tile
        (the server stitches in its encoder threads, off the event loop)."""
        pieces = column_pieces(self.G.size, start, width)
        parts = await asyncio.gather(*(self.span(SpanKey(seed, p.index, self.truncation)) for p in pieces))
        return pieces, list(parts)

    async def span(self, key: SpanKey) -> np.ndarray:
        """One span's contributed columns, ``[R, hi - lo, 3]`` uint8, from the cache or the next batch."""
        hit = self._cache.peek(key)
        if hit is not None:
            return hit
        if key not in self._pending:
            self._pending[key] = asyncio.get_running_loop().create_future()
            self._waiters[key] = 0
            self._queue.append(key)
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())
        future = self._pending[key]
        self._waiters[key] += 1
        try:
            # shield: one waiter going away (a disconnect) must not cancel a span that others share
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._forget(key)
            raise

    def _forget(self, key: SpanKey) -> None:
        """A waiter left: drop the span if nobody else wants it and no batch has taken it yet."""
        if key not in self._waiters:
            return
        self._waiters[key] -= 1
        if self._waiters[key] == 0 and key in self._queue:
            self._queue.remove(key)
            del self._waiters[key]
            self._pending.pop(key).cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.depth)
        try:
            while self._queue:
                await self._slots.acquire()  # at most `depth` batches between launch and host
                await asyncio.sleep(self.window_s)
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                if not batch:
                    self._slots.release()
                    continue  # every queued span was dropped during the window
                try:
                    launched = await loop.run_in_executor(self.worker, self._launch, batch)
                except Exception as exc:  # handed to every waiter; the server closes their streams
                    self._slots.release()
                    self._settle(batch, exc=exc)
                    continue
                asyncio.create_task(self._finish(batch, launched))
        finally:
            self._runner = None

    async def _finish(self, batch: list[SpanKey], launched: _Launched) -> None:
        try:
            pieces = await asyncio.get_running_loop().run_in_executor(self._finisher, launched.wait)
        except Exception as exc:
            self._settle(batch, exc=exc)
            return
        finally:
            self._slots.release()
        now = time.monotonic()
        took = now - launched.started
        self.batch_s = took if self.batch_s is None else 0.8 * self.batch_s + 0.2 * took
        self._done.append((now, len(batch)))
        self.stats["batches"] += 1
        self.stats["spans"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        self.on_batch(len(batch), took)
        self._settle(batch, pieces)

    def _settle(self, batch: list[SpanKey], pieces: list[np.ndarray] | None = None, exc: Exception | None = None):
        for i, key in enumerate(batch):
            del self._waiters[key]
            future = self._pending.pop(key)
            if exc is not None:
                future.set_exception(exc)
            else:
                self._cache.put(key, pieces[i])
                future.set_result(pieces[i])

    def _launch(self, batch: list[SpanKey]) -> _Launched:
        """On the worker thread: one batched generator call, uint8 on the device, the copy to the host started."""
        started = time.monotonic()
        parts = self.span_source(self.G, batch)
        widths = [hi - lo for lo, hi in (span_columns(self.G.size, k.index) for k in batch)]
        return _Launched(device_uint8(parts), widths, started)

    def close(self) -> None:
        self._finisher.shutdown(wait=False, cancel_futures=True)
