"""Batching of endless-panorama spans across every client of the server, sized to what the device gains.

Each stream asks for the spans under its next tiles. Spans wait in one queue, ordered by their
``rank`` (how many tiles of their stream come before them: every stream's next tile goes before
anyone's second), then by arrival. When the generator's worker thread is free for a stream batch,
the batch policy (``BatchPolicy``) says how many spans from the front of the queue one
``merge_extension`` call takes:

- all that wait (up to ``max_batch``) when that batch is predicted to take at most ``target_s``
  (a GPU: tens of milliseconds for 64 spans, so N viewers cost one call per step, not N);
- otherwise the smallest batch with which computing all that wait costs at most ``1 / EFFICIENCY``
  of doing it in one call. Where a span costs the same alone or in a batch (a CPU), that is one span
  a call, so tiles arrive one by one as they are computed instead of all together at the end.

The prediction is measured: each batch's time (launch to pixels on the host, less any time it
queued behind the one before) updates a running mean for its size, and a line (a fixed cost per
call plus a cost per span) is fitted to those. A batch waits ``window_s`` for others to join only
when fewer spans wait than the policy would take: never where it takes one at a time.

The batch is chosen when its turn on the worker comes (``Turns``), so a span whose every waiter
has left (a stream that disconnected, or moved to another seed or column) leaves the queue unless a
batch has already taken it; a span another stream still waits for stays. Range requests
(``/api/panorama.png``) compute each span alone (``alone``: exact pixels) and take turns with the
stream batches: one range span, one stream batch, while both wait, so neither waits for the
other's whole queue.

Finished spans go into a bounded LRU (uint8 pixels on the host), so viewers at the same place
share them. The host does as little per span as it can: the batch's contributed columns are
converted to uint8 and laid side by side (``[R, sum of widths, 3]``) on the generator's device,
then copied to the host in one transfer. On CUDA that copy goes into pinned memory without
blocking the worker thread, so up to ``depth`` batches are in flight: the worker launches the next
batch while a finisher thread waits for the previous one's copy, and encoding (the server's encoder
pool) overlaps both. Where the generator replays CUDA graphs, a batch runs at one of a few sizes
(``G.cuda_graphs.padded_batch``); the warm-up runs each of them, so every capture happens before
the first client, then runs each again to time it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..runtime.endless import Piece, SpanKey, column_pieces, span, span_columns, spans, stitch
from ..runtime.images import device_uint8, to_uint8
from ..runtime.lru import LRU

if TYPE_CHECKING:
    from ..runtime.cuda_graph_tasks import CudaGraphTasks
    from ..runtime.generator import Generator

SpanSource = Callable[["Generator", Sequence[SpanKey]], Sequence[torch.Tensor]]  # what computes a batch of spans

# The batch policy's numbers (``BatchPolicy``); ``max_batch``, ``window_s`` and ``target_s`` are the server's settings.
TARGET_BATCH_S = 0.25  # a batch predicted to take at most this long takes every waiting span
EFFICIENCY = 0.9  # a smaller batch is taken when computing all waiting spans that way costs at most 1/0.9 as long
SMOOTHING = 0.2  # weight of a new measurement in the running mean time of a batch size
RATE_WINDOW_S = 5.0  # generated columns/s counts the batches finished this recently ...
RATE_MIN_BATCHES = 2  # ... and at least this many (a CPU batch can take longer than the window)

STREAM, RANGE = "stream", "range"  # the kinds of work that take turns on the worker


class BatchPolicy:
    """How many spans the next batch takes, and how long a batch of n spans takes (measured).

    Args:
        max_batch: the most spans in one generator call.
        window_s: how long a batch that the policy would make larger waits for others to join.
        target_s: a batch predicted to take at most this long takes every waiting span.
        graphs: the generator's ``cuda_graphs`` (the batch a call of n spans runs at; whether the first
            call of a size is a capture, which is not timed).
        per_span: before two sizes are timed, assume that batches cost the same per span at any size
            (a CPU, measured) rather than the same per call (a GPU).
    """

    def __init__(self, max_batch: int, window_s: float, target_s: float, graphs: CudaGraphTasks, per_span: bool):
        self.max_batch = max_batch
        self.window_s = window_s
        self.target_s = target_s
        self._graphs = graphs
        self._per_span = per_span
        self._seconds: dict[int, float] = {}  # running mean seconds of a batch, by the size it ran at
        self._captured: set[int] = set()
        self._line: tuple[float, float] | None = None  # (per call, per span) seconds, fitted to _seconds

    def observe(self, spans: int, seconds: float) -> None:
        """A batch of ``spans`` spans took ``seconds`` on the device."""
        size = self._graphs.padded_batch(spans)
        if self._graphs.enabled and size not in self._captured:
            self._captured.add(size)  # the first call at a size includes its CUDA graph capture
            return
        old = self._seconds.get(size)
        self._seconds[size] = seconds if old is None else (1 - SMOOTHING) * old + SMOOTHING * seconds
        self._line = self._fit()

    def _fit(self) -> tuple[float, float]:
        """``(per call, per span)`` seconds fitted to the sizes timed so far."""
        if len(self._seconds) == 1:
            (size, seconds), = self._seconds.items()
            return (0.0, seconds / size) if self._per_span else (seconds, 0.0)
        sizes, seconds = (np.array(v, dtype=float) for v in zip(*self._seconds.items()))
        per_span, per_call = np.polyfit(sizes, seconds, 1)
        if per_span <= 0:  # larger batches took no longer: a cost per call only
            return float(seconds.mean()), 0.0
        if per_call < 0:  # the line through the origin instead
            return 0.0, float(sizes @ seconds / (sizes @ sizes))
        return float(per_call), float(per_span)

    def seconds(self, spans: int) -> float | None:
        """Predicted seconds of a batch of ``spans`` spans (None before any batch was timed)."""
        line = self._line
        return None if line is None else line[0] + line[1] * self._graphs.padded_batch(spans)

    def size(self, waiting: int) -> int:
        """How many of ``waiting`` spans the next batch takes."""
        n = min(waiting, self.max_batch)
        whole = self.seconds(n)
        if whole is None or n <= 1 or whole <= self.target_s:
            return n
        sizes = (b for b in range(1, n) if self._graphs.padded_batch(b) == b)  # no padded smaller batches
        return next((b for b in sizes if math.ceil(n / b) * self.seconds(b) * EFFICIENCY <= whole), n)


class Turns:
    """Whose turn it is on the generator's worker thread: stream batches and range spans alternate while both
    wait (each kind first come, first served), so neither waits for the other's whole queue."""

    def __init__(self):
        self._waiting: dict[str, deque[asyncio.Future]] = {STREAM: deque(), RANGE: deque()}
        self._holder: str | None = None

    @asynccontextmanager
    async def turn(self, kind: str) -> AsyncIterator[None]:
        if self._holder is None:
            self._holder = kind
        else:
            handed = asyncio.get_running_loop().create_future()
            self._waiting[kind].append(handed)
            try:
                await handed
            except asyncio.CancelledError:
                if handed.cancelled():
                    self._waiting[kind].remove(handed)
                else:  # the turn came as this waiter left: pass it on
                    self._pass()
                raise
        try:
            yield
        finally:
            self._pass()

    def _pass(self) -> None:
        other = RANGE if self._holder == STREAM else STREAM
        for kind in (other, self._holder):
            if self._waiting[kind]:
                self._holder = kind
                self._waiting[kind].popleft().set_result(None)
                return
        self._holder = None


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
            self.ready: float | None = None
        else:
            self.host, self.event, self.ready = pixels, None, time.monotonic()

    def wait(self) -> list[np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
            self.ready = time.monotonic()
        host = self.host.numpy()
        edges = np.cumsum([0, *self.widths])
        return [host[:, a:b] for a, b in zip(edges[:-1], edges[1:])]


@dataclass(eq=False)
class _Job:
    """Work handed to the worker (a batch or a range span) and how long it is predicted to take."""
    seconds: float
    start: float  # when it was handed over, or, once it is the oldest job in hand, when the worker began it


class _Done(NamedTuple):
    """A finished stream batch, for the generated rate."""
    started: float  # when the device began it (after the batch before it)
    finished: float
    spans: int


class SpanBatcher:
    """Computes spans of one generator in batches; ``await tile(seed, start, width)`` from any task.

    Args:
        G: the generator.
        worker: the single-thread executor that runs every generator call.
        truncation: psi of the served panoramas.
        max_batch, window_s, target_s: the batch policy's settings (``BatchPolicy``).
        capacity: spans kept in the LRU (each ``R x (R + R // 2)`` RGB at most).
        depth: batches launched and not yet on the host (more than 1 helps only on CUDA).
        span_source: ``(G, keys) -> [1, 3, R, w]`` images in [-1, 1], one per key: computes a batch
            (default: the runtime's ``spans``; a load test passes a free one).
        on_batch: called with ``(spans, seconds)`` of each batch on the host (the server's metrics).
    """

    def __init__(self, G: Generator, worker: Executor, truncation: float, max_batch: int = 16,
                 window_s: float = 0.004, target_s: float = TARGET_BATCH_S, capacity: int = 256, depth: int = 2,
                 span_source: SpanSource = spans, on_batch: Callable[[int, float], None] = lambda spans, seconds: None):
        self.G = G
        self.on_batch = on_batch
        self.span_source = span_source
        self.worker = worker
        self.truncation = truncation
        self.policy = BatchPolicy(max_batch, window_s, target_s, G.cuda_graphs, per_span=G.device.type == "cpu")
        self.turns = Turns()
        self.depth = depth
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="soat-copy")
        self._slots: asyncio.Semaphore | None = None
        self._cache: LRU[SpanKey, np.ndarray] = LRU(capacity)
        self._pending: dict[SpanKey, asyncio.Future] = {}  # queued or being computed
        self._waiters: dict[SpanKey, int] = {}  # tasks awaiting each pending span
        self._queue: dict[SpanKey, tuple[int, int]] = {}  # not yet in a batch: (rank, arrival)
        self._arrivals = 0
        self._in_hand: list[_Job] = []  # handed to the worker and not done, in order
        self._computing: dict[SpanKey, _Job] = {}  # spans in a batch: its job
        self._device_free = 0.0  # when the last finished batch left the device
        self._range_spans = 0  # spans of open range requests not yet handed to the worker
        self._last_handed = STREAM  # the kind of the last work handed to the worker
        self._runner: asyncio.Task | None = None
        self._done: deque[_Done] = deque()  # recent stream batches, for the generated rate
        self.stats = {"batches": 0, "spans": 0, "largest_batch": 0}

    @property
    def max_batch(self) -> int:
        return self.policy.max_batch

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def batch_size(self) -> int:
        """The spans a batch takes now when plenty wait."""
        return self.policy.size(self.max_batch)

    @property
    def batch_s(self) -> float | None:
        """Predicted seconds of such a batch (None before any batch was timed)."""
        return self.policy.seconds(self.batch_size)

    def columns_per_s(self) -> float:
        """Columns generated per second for the streams (all clients): the stream batches finished in the last
        ``RATE_WINDOW_S``, or the last ``RATE_MIN_BATCHES`` where batches take longer, over the time since the
        first of them began. While a batch is being computed the rate holds for one mean batch time (its columns
        are coming), then falls, so it neither drops to 0 between slow batches nor stays up once they stop."""
        now = time.monotonic()
        while len(self._done) > RATE_MIN_BATCHES and now - self._done[0].finished > RATE_WINDOW_S:
            self._done.popleft()
        if not self._done:
            return 0.0
        first, last = self._done[0].started, self._done[-1].finished
        grace = (last - first) / len(self._done) if self._in_hand else 0.0
        elapsed = max(last - first, now - first - grace)
        return sum(d.spans for d in self._done) * self.G.size / max(elapsed, 1e-9)

    def tile_eta_s(self, seed: int, start: int, width: int) -> float | None:
        """About how long until columns ``[start, start + width)`` of panorama ``seed`` are computed (0 if
        cached; None before any batch was timed). Spans nobody asked for yet are placed as a new stream's
        first tile would be."""
        return self._eta_s([SpanKey(seed, p.index, self.truncation) for p in column_pieces(self.G.size, start, width)])

    def first_tile_eta_s(self) -> float | None:
        """About how long a new stream at a place nobody streams waits for its first tile (None before any batch)."""
        return self._eta_s([], new=1)

    def _eta_s(self, keys: list[SpanKey], new: int = 0) -> float | None:
        """Predicted seconds until ``keys`` and ``new`` spans not asked for yet (queued as rank 0) are computed:
        what the worker has in hand, then the queue ahead of them batch by batch as the policy splits it."""
        if self.policy.seconds(1) is None:
            return None
        missing = [k for k in dict.fromkeys(keys) if self._cache.peek(k) is None]
        queued = [k for k in missing if k in self._queue]
        new += sum(k not in self._queue and k not in self._computing for k in missing)
        if not queued and not new:
            return max([0.0, *(self._left_s(self._computing[k]) for k in missing)])
        order = sorted(self._queue, key=self._queue.__getitem__)
        firsts = sum(rank == 0 for rank, _ in self._queue.values())  # new spans queue after these
        position = {k: i + (new if i >= firsts else 0) for i, k in enumerate(order)}
        through = max([firsts + new if new else 0, *(position[k] + 1 for k in queued)])
        return self._left_s() + self._queue_s(len(order) + new, through)

    def _left_s(self, through: _Job | None = None) -> float:
        """Predicted seconds until the worker is done with the jobs in hand (up to ``through``): they run one
        after another from the oldest one's start."""
        total = 0.0
        for job in self._in_hand:
            total += job.seconds
            if job is through:
                break
        return max(0.0, total - (time.monotonic() - self._in_hand[0].start)) if self._in_hand else 0.0

    def _queue_s(self, waiting: int, through: int) -> float:
        """Predicted seconds until the first ``through`` of ``waiting`` queued spans are computed, batch by batch,
        with a range span before each batch while range requests have spans to compute, as turns alternate
        (none before the first batch if a range span was the last work handed over)."""
        total, ranges, done = 0.0, self._range_spans, 0
        range_turn = self._last_handed == STREAM
        while done < through:
            if ranges and range_turn:
                total, ranges = total + self.policy.seconds(1), ranges - 1
            n = self.policy.size(waiting - done)
            total, done, range_turn = total + self.policy.seconds(n), done + n, True
        return total

    async def warm_up(self) -> None:
        """Before the first client: one batch of each size the generator asks for (``warmup_batches``: where it
        replays CUDA graphs every padded size up to ``max_batch``, largest first, so that every capture happens
        now, not during a stream, and then each again to time it; elsewhere one span, timed), so that the
        policy and the ETA start from measured times. The spans are seed 0's first, cached for its viewers."""
        sizes = self.G.cuda_graphs.warmup_batches(self.max_batch)
        for _ in range(2 if self.G.cuda_graphs.enabled else 1):
            first = 0
            for n in sizes:
                keys = [SpanKey(0, first + i, self.truncation) for i in range(n)]
                async with self.turns.turn(STREAM):
                    launched = await self._launch_on_worker(keys)
                pieces, _ = await self._on_host(keys, launched)
                for key, piece in zip(keys, pieces):
                    self._cache.put(key, piece)
                first += n

    async def tile(self, seed: int, start: int, width: int) -> np.ndarray:
        """Columns ``[start, start + width)`` of panorama ``seed``: ``[R, width, 3]`` uint8."""
        return stitch(self.G.size, *await self.tile_parts(seed, start, width), width)

    async def tile_parts(self, seed: int, start: int, width: int,
                         rank: int = 0) -> tuple[list[Piece], list[np.ndarray]]:
        """The pieces of a tile and their spans' pixels: ``stitch(R, pieces, parts, width)`` makes the tile
        (the server stitches in its encoder threads, off the event loop). ``rank``: how many tiles of the
        same stream are ahead of this one (its spans queue behind other streams' earlier tiles)."""
        pieces = column_pieces(self.G.size, start, width)
        parts = await asyncio.gather(*(self.span(SpanKey(seed, p.index, self.truncation), rank) for p in pieces))
        return pieces, list(parts)

    async def span(self, key: SpanKey, rank: int = 0) -> np.ndarray:
        """One span's contributed columns, ``[R, hi - lo, 3]`` uint8, from the cache or a batch."""
        hit = self._cache.peek(key)
        if hit is not None:
            return hit
        if key not in self._pending:
            self._pending[key] = asyncio.get_running_loop().create_future()
            self._waiters[key] = 0
            self._queue[key] = (rank, self._arrivals)
            self._arrivals += 1
            if self._runner is None:
                self._runner = asyncio.create_task(self._run())
        elif key in self._queue and rank < self._queue[key][0]:
            self._queue[key] = (rank, self._queue[key][1])  # shared with a stream that needs it sooner
        future = self._pending[key]
        self._waiters[key] += 1
        try:
            # shield: one waiter going away (a disconnect) must not cancel a span that others share
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._forget(key)
            raise

    async def alone(self, keys: Sequence[SpanKey]) -> list[np.ndarray]:
        """Each span of ``keys`` computed alone (exact, as ``panorama_columns`` computes it), one per range turn
        on the worker; a cancelled call gives up its turn, or, if a span is being computed, keeps the turn until
        that span is done (the worker cannot be interrupted)."""
        parts, loop, handed = [], asyncio.get_running_loop(), 0
        self._range_spans += len(keys)  # not yet handed to the worker (for the ETA)
        try:
            for key in keys:
                async with self.turns.turn(RANGE):
                    job = self._hand_over(1, RANGE)
                    self._range_spans, handed = self._range_spans - 1, handed + 1
                    future = loop.run_in_executor(self.worker, _exact_span, self.G, key)
                    try:
                        parts.append(await asyncio.shield(future))
                    except asyncio.CancelledError:
                        await asyncio.wait([future])
                        raise
                    finally:
                        self._done_with(job)
            return parts
        finally:
            self._range_spans -= len(keys) - handed

    def _forget(self, key: SpanKey) -> None:
        """A waiter left: drop the span if nobody else wants it and no batch has taken it yet."""
        if key not in self._waiters:
            return
        self._waiters[key] -= 1
        if self._waiters[key] == 0 and key in self._queue:
            del self._queue[key]
            del self._waiters[key]
            self._pending.pop(key).cancel()

    def _take(self) -> list[SpanKey]:
        """The next batch, from the front of the queue, as many spans as the policy says."""
        order = sorted(self._queue, key=self._queue.__getitem__)
        batch = order[:self.policy.size(len(order))]
        for key in batch:
            del self._queue[key]
        return batch

    def _hand_over(self, n: int, kind: str) -> _Job:
        """``n`` spans of a ``kind`` turn go to the worker now."""
        job = _Job(self.policy.seconds(n) or 0.0, time.monotonic())
        self._in_hand.append(job)
        self._last_handed = kind
        return job

    def _done_with(self, job: _Job) -> None:
        first = self._in_hand[0] is job
        self._in_hand.remove(job)
        if first and self._in_hand:  # the next one runs from now (it may have been handed over earlier)
            self._in_hand[0].start = max(self._in_hand[0].start, time.monotonic())

    async def _launch_on_worker(self, batch: list[SpanKey]) -> _Launched:
        job = self._hand_over(len(batch), STREAM)
        self._computing.update(dict.fromkeys(batch, job))
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, self._launch, batch)
        except BaseException:
            self._done_with(job)
            for key in batch:
                del self._computing[key]
            raise

    async def _on_host(self, batch: list[SpanKey], launched: _Launched) -> tuple[list[np.ndarray], float]:
        """A launched batch's pixels once on the host, and when the device began it; its time goes to the policy."""
        try:
            pieces = await asyncio.get_running_loop().run_in_executor(self._finisher, launched.wait)
        finally:
            self._done_with(self._computing[batch[0]])
            for key in batch:
                del self._computing[key]
        started = max(launched.started, self._device_free)  # not the time it queued behind the batch before
        self._device_free = launched.ready
        self.policy.observe(len(batch), launched.ready - started)
        return pieces, started

    async def _run(self) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.depth)
        try:
            while self._queue:
                await self._slots.acquire()  # at most `depth` batches between launch and host
                if len(self._queue) < self.batch_size:  # the device gains from a larger batch: let others join
                    await asyncio.sleep(self.policy.window_s)
                async with self.turns.turn(STREAM):
                    batch = self._take()
                    if not batch:  # every queued span was dropped meanwhile
                        self._slots.release()
                        continue
                    try:
                        launched = await self._launch_on_worker(batch)
                    except Exception as exc:  # handed to every waiter; the server closes their streams
                        self._slots.release()
                        self._settle(batch, exc=exc)
                        continue
                asyncio.create_task(self._finish(batch, launched))
        finally:
            self._runner = None

    async def _finish(self, batch: list[SpanKey], launched: _Launched) -> None:
        try:
            pieces, started = await self._on_host(batch, launched)
        except Exception as exc:
            self._settle(batch, exc=exc)
            return
        finally:
            self._slots.release()
        self._done.append(_Done(started, launched.ready, len(batch)))
        self.stats["batches"] += 1
        self.stats["spans"] += len(batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        self.on_batch(len(batch), launched.ready - started)
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


def _exact_span(G: Generator, key: SpanKey) -> np.ndarray:
    """One span's contributed columns computed alone (as ``panorama_columns`` does): ``[R, w, 3]`` uint8."""
    return to_uint8(span(G, key))[0]
