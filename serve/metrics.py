"""What a running ``soat serve`` exposes to operators: Prometheus metrics and one log line per stream.

``GET /metrics`` answers in Prometheus' text format (``prometheus-client``)::

    soat_frames_total{format}          counter    stream frames (tiles) sent, ``batch`` of them a message
    soat_tiles_total                   counter    columns sent in stream frames / R (R-column tiles; a
                                                  frame of T columns counts T / R)
    soat_frame_latency_seconds         histogram  a frame's time in the server: from the moment it is
                                                  started against the client's credit to its hand-over
                                                  to the socket (generator queue, batch, stitching,
                                                  encoding)
    soat_batch_size                    histogram  spans per generator call
    soat_batch_seconds                 histogram  one generator call, launch to pixels on the host
    soat_queue_depth                   gauge      spans queued for or being computed in a batch
    soat_active_streams                gauge      open streams
    soat_streams_closed_total{reason}  counter    streams ended, by why (``CLOSE_REASONS``)
    soat_gpu_memory_bytes{kind}        gauge      the generator's CUDA memory, ``allocated`` or
                                                  ``reserved`` by PyTorch (absent off CUDA)

Gauges are read when ``/metrics`` is scraped. With ``--workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set
by ``soat serve`` for its workers) every worker writes its metrics to that folder and a scrape of
any worker answers for all of them: counters and histograms summed, gauges summed over live workers
(each worker refreshes its own every ``REFRESH_S``).

The log line (logger ``soat.serve``, INFO; ``soat serve`` prints it to stderr) is ``stream seed=S x=X
tile=T format=F frames=N columns=C batch=K duration_s=D close=REASON code=CODE client=ADDRESS`` (frames
are tiles, K to a WebSocket message), written when a stream ends; its fields are also the record's
``stream`` attribute (a dict), for structured log handlers. A refused stream's line has no frames.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's switch to its multi-process mode
CONTENT_TYPE = CONTENT_TYPE_LATEST
REFRESH_S = 1.0  # how often a worker of several refreshes its gauges
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# why a stream ended: the client left or closed it; it asked for no frame for stream_idle_s; the server
# drained (SIGTERM); the client broke the protocol; the generator failed; it was refused (limits, query)
CLOSE_REASONS = ("client", "idle", "drain", "protocol", "error", "refused")

log = logging.getLogger("soat.serve")


class ServerMetrics:
    """The metrics of one server (its own registry, so that several servers in one process stay apart).

    ``gauges()`` returns ``(open streams, queued spans)`` when the gauges are refreshed; ``device`` is
    the generator's.
    """

    def __init__(self, device: torch.device, gauges: Callable[[], tuple[int, int]]):
        self.device = device
        self.gauges = gauges
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("soat_frames", "Stream frames sent", ["format"], registry=r)
        self.tiles = Counter("soat_tiles", "Columns sent in stream frames, in R-column tiles", registry=r)
        self.frame_latency = Histogram("soat_frame_latency_seconds", "A frame's time in the server, from its "
                                       "start against the client's credit to the socket", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.batch_size = Histogram("soat_batch_size", "Spans per generator call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("soat_batch_seconds", "One generator call, launch to pixels on the host",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("soat_queue_depth", "Spans queued for or being computed in a batch",
                                 multiprocess_mode="livesum", registry=r)
        self.active_streams = Gauge("soat_active_streams", "Open streams", multiprocess_mode="livesum", registry=r)
        self.streams_closed = Counter("soat_streams_closed", "Streams ended, by reason", ["reason"], registry=r)
        self.gpu_memory = Gauge("soat_gpu_memory_bytes", "CUDA memory of the generator's device held by PyTorch",
                                ["kind"], multiprocess_mode="livesum", registry=r)
        for reason in CLOSE_REASONS:  # every reason present from the start, so rates need no absent series
            self.streams_closed.labels(reason)

    def frame_sent(self, fmt: str, tiles: float, latency_s: float) -> None:
        self.frames.labels(fmt).inc()
        self.tiles.inc(tiles)
        self.frame_latency.observe(latency_s)

    def batch_done(self, spans: int, seconds: float) -> None:
        self.batch_size.observe(spans)
        self.batch_seconds.observe(seconds)

    def stream_closed(self, fields: dict) -> None:
        """Count a stream that ended (``fields["close"]``: one of ``CLOSE_REASONS``) and log its line
        (``fields``, in order)."""
        self.streams_closed.labels(fields["close"]).inc()
        log.info("stream %s", " ".join(f"{key}={value}" for key, value in fields.items()), extra={"stream": fields})

    def refresh(self) -> None:
        streams, queued = self.gauges()
        self.active_streams.set(streams)
        self.queue_depth.set(queued)
        if self.device.type == "cuda":
            self.gpu_memory.labels("allocated").set(torch.cuda.memory_allocated(self.device))
            self.gpu_memory.labels("reserved").set(torch.cuda.memory_reserved(self.device))

    def exposition(self) -> bytes:
        """The text ``/metrics`` answers: this server's metrics, or every worker's in multi-process mode."""
        self.refresh()
        if not os.environ.get(MULTIPROCESS_DIR):
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone)
        return generate_latest(everyone)

    async def keep_fresh(self) -> None:
        """In multi-process mode, refresh this worker's gauges every ``REFRESH_S`` (a scrape reaches one
        worker, which cannot read the others' state); returns at once otherwise."""
        while os.environ.get(MULTIPROCESS_DIR):
            self.refresh()
            await asyncio.sleep(REFRESH_S)
