"""Dynamic batching of endless-panorama spans across every client of the server.

Each stream asks for the spans under its next tile. Requests that arrive within a
short window (a few milliseconds) are computed together: one ``merge_extension``
call with a batch of B spans on the generator's worker thread, so N viewers cost
one batched call per step instead of N calls. Finished spans go into a bounded LRU
(as uint8 pixels on the host), so viewers at the same place share them. Pending
requests are bounded too: each stream waits on at most a few tiles, and a span that
every waiter has abandoned (its clients disconnected) leaves the queue unless a
batch has already taken it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from ..runtime.images import to_uint8
from ..runtime.tasks.infinite import LRU, SpanKey, spans
from ..runtime.tasks.panorama_geometry import column_pieces, stitch


class SpanBatcher:
    """Computes spans of one generator in batches; ``await tile(seed, start, width)`` from any task.

    Args:
        G: the generator.
        worker: the single-thread executor that runs every generator call.
        truncation: psi of the served panoramas.
        max_batch: the most spans in one generator call.
        window_s: how long the first request of a step waits for others to join.
        capacity: spans kept in the LRU (each ``R x (R + R // 2)`` RGB at most).
    """

    def __init__(self, G, worker: Executor, truncation: float, max_batch: int = 16, window_s: float = 0.004,
                 capacity: int = 256):
        self.G = G
        self.worker = worker
        self.truncation = truncation
        self.max_batch = max_batch
        self.window_s = window_s
        self._cache = LRU(capacity)
        self._pending: dict[SpanKey, asyncio.Future] = {}  # queued or being computed
        self._waiters: dict[SpanKey, int] = {}  # tasks awaiting each pending span
        self._queue: list[SpanKey] = []
        self._runner: asyncio.Task | None = None
        self.stats = {"batches": 0, "spans": 0, "max_batch": 0}

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def tile(self, seed: int, start: int, width: int) -> np.ndarray:
        """Columns ``[start, start + width)`` of panorama ``seed``: ``[R, width, 3]`` uint8."""
        pieces = column_pieces(self.G.size, start, width)
        parts = await asyncio.gather(*(self.span(SpanKey(seed, p.index, self.truncation)) for p in pieces))
        return stitch(self.G.size, pieces, parts, width)

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
        try:
            while self._queue:
                await asyncio.sleep(self.window_s)
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                if not batch:
                    continue  # every queued span was dropped during the window
                try:
                    pieces = await loop.run_in_executor(self.worker, self._compute, batch)
                except Exception as exc:  # handed to every waiter; the server closes their streams
                    for key in batch:
                        del self._waiters[key]
                        self._pending.pop(key).set_exception(exc)
                    continue
                for key, piece in zip(batch, pieces):
                    self._cache.put(key, piece)
                    del self._waiters[key]
                    self._pending.pop(key).set_result(piece)
        finally:
            self._runner = None

    def _compute(self, batch: list[SpanKey]) -> list[np.ndarray]:
        """On the worker thread: one batched generator call, then pixels to the host."""
        pieces = [np.ascontiguousarray(to_uint8(p)[0]) for p in spans(self.G, batch)]
        self.stats["batches"] += 1
        self.stats["spans"] += len(batch)
        self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
        return pieces
