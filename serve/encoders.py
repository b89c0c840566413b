"""Who encodes the stream's frames: the one place where the JPEG encoder is chosen (``frame_encoder``).

``libjpeg-turbo``: a pool of threads stitches and encodes each tile (``protocol.encode_image``: JPEG
through simplejpeg, which holds the GIL only to enter and leave libjpeg-turbo, so the threads encode
in parallel beside the event loop; PNG and WebP through Pillow).

``nvjpeg``: JPEG tiles are encoded on the generator's GPU in batches: one thread takes every tile
waiting (up to ``MAX_JPEG_BATCH``), stitches them into one pinned buffer, copies it to the GPU once,
encodes them with nvJPEG (``torchvision.io.encode_jpeg`` on CUDA tensors) and copies all the JPEG
bytes back at once. torchvision's CUDA encoder writes 4:4:4 chroma (libjpeg-turbo's tiles are 4:2:0,
as Pillow's were), so its frames are larger and a little closer to the exact pixels. PNG and WebP
frames stay on the thread pool.

``auto`` (the default) takes nvjpeg when the generator is on CUDA and torchvision's nvJPEG encoder
runs (a tiny encode is tried at start), else libjpeg-turbo (saying why, on CUDA).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from concurrent.futures import Executor
from typing import Callable

import numpy as np
import torch

from ..errors import SoatError
from .protocol import JPEG_QUALITY, encode_image

JPEG_ENCODERS = ("auto", "libjpeg-turbo", "nvjpeg")
MAX_JPEG_BATCH = 64  # tiles in one nvJPEG batch (one H2D copy, one D2H copy)

log = logging.getLogger("soat.serve")
Pixels = Callable[[], np.ndarray]  # makes a tile's [R, w, 3] uint8 pixels (stitches it), in the encoding thread


def check_jpeg_encoder(value: object) -> str:
    if value not in JPEG_ENCODERS:
        raise SoatError(f"jpeg_encoder={value!r} is not a JPEG encoder; use one of {', '.join(JPEG_ENCODERS)}")
    return value


class ThreadEncoder:
    """Frames stitched and encoded in a pool of threads (``protocol.encode_image``)."""

    name = "libjpeg-turbo"

    def __init__(self, pool: Executor):
        self.pool = pool

    async def frame(self, pixels: Pixels, fmt: str, header: bytes) -> bytes:
        """``header`` + the tile ``pixels()`` encoded as ``fmt``."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, _frame_bytes, pixels, fmt, header)

    def close(self) -> None:
        """The pool belongs to the server, which shuts it down."""


def _frame_bytes(pixels: Pixels, fmt: str, header: bytes) -> bytes:
    return header + encode_image(pixels(), fmt, fast=True)


class NvJpegEncoder(ThreadEncoder):
    """JPEG frames encoded on ``device`` in batches by one thread; other formats on the pool."""

    name = "nvjpeg"

    def __init__(self, pool: Executor, device: torch.device):
        super().__init__(pool)
        self.device = device
        self.stream = torch.cuda.Stream(device)  # uploads and layout off the generator's stream
        self._host = torch.empty(0, dtype=torch.uint8)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="soat-nvjpeg", daemon=True)
        self._thread.start()

    async def frame(self, pixels: Pixels, fmt: str, header: bytes) -> bytes:
        if fmt != "jpeg":
            return await super().frame(pixels, fmt, header)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((pixels, header, future, loop))
        return await future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                payloads = self.encode([pixels() for pixels, *_ in batch])
            except Exception as exc:  # handed to every frame of the batch: their streams close with the reason
                for _, _, future, loop in batch:
                    loop.call_soon_threadsafe(_settle, future, None, exc)
                continue
            for (_, header, future, loop), payload in zip(batch, payloads):
                loop.call_soon_threadsafe(_settle, future, header + payload, None)

    def _next_batch(self) -> list | None:
        """Every job waiting (at least one, at most ``MAX_JPEG_BATCH``); None once closed."""
        job = self._jobs.get()
        if job is None:
            return None
        batch = [job]
        while len(batch) < MAX_JPEG_BATCH:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # end after this batch
                break
            batch.append(job)
        return batch

    def encode(self, tiles: list[np.ndarray]) -> list[bytes]:
        """``[R, w, 3]`` uint8 tiles -> their JPEG bytes: one copy to the GPU, nvJPEG, one copy back."""
        from torchvision.io import encode_jpeg
        edges = [0, *itertools.accumulate(t.nbytes for t in tiles)]
        if self._host.numel() < edges[-1]:
            self._host = torch.empty(edges[-1], dtype=torch.uint8, pin_memory=True)
        host = self._host.numpy()
        for t, a, b in zip(tiles, edges, edges[1:]):
            host[a:b].reshape(t.shape)[...] = t
        with torch.cuda.stream(self.stream):
            flat = self._host[:edges[-1]].to(self.device, non_blocking=True)
            images = [flat[a:b].view(t.shape).permute(2, 0, 1).contiguous() for t, a, b in zip(tiles, edges, edges[1:])]
            # torchvision encodes on a stream of its own, not ordered after this one
            self.stream.synchronize()
            encoded = encode_jpeg(images, quality=JPEG_QUALITY)
            # it hands the bytes over on the default stream: wait for them there
            torch.cuda.default_stream(self.device).synchronize()
            lengths = [0, *itertools.accumulate(e.numel() for e in encoded)]
            data = torch.cat(encoded).cpu().numpy().tobytes()
        return [data[a:b] for a, b in zip(lengths, lengths[1:])]


def _settle(future: asyncio.Future, result: bytes | None, exc: Exception | None) -> None:
    if future.done():  # its stream is gone
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def nvjpeg_problem(device: torch.device) -> str | None:
    """Why nvJPEG cannot encode tiles for a generator on ``device``, or None if it can (a tiny encode is tried)."""
    if device.type != "cuda":
        return f"the generator is on {device}, not on CUDA"
    try:
        from torchvision.io import encode_jpeg
        encode_jpeg([torch.zeros(3, 16, 16, dtype=torch.uint8, device=device)], quality=JPEG_QUALITY)
    except Exception as exc:  # ImportError, a torchvision built without nvJPEG, a library it cannot load
        return f"torchvision's nvJPEG encoder does not run here ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def frame_encoder(choice: str, device: torch.device, pool: Executor) -> ThreadEncoder:
    """The frame encoder for ``choice`` (``JPEG_ENCODERS``) and a generator on ``device``; ``pool``: the
    server's encoder threads. SoatError if ``choice`` is nvjpeg and nvJPEG cannot run."""
    check_jpeg_encoder(choice)
    if choice == "libjpeg-turbo":
        return ThreadEncoder(pool)
    problem = nvjpeg_problem(device)
    if problem is None:
        return NvJpegEncoder(pool, device)
    if choice == "nvjpeg":
        raise SoatError(f"jpeg_encoder='nvjpeg' cannot run: {problem}; use 'auto' or 'libjpeg-turbo'")
    if device.type == "cuda":
        log.warning("JPEG tiles are encoded on the CPU (libjpeg-turbo): %s", problem)
    return ThreadEncoder(pool)
