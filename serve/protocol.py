"""The wire format of ``soat serve``: query parameters, stream frames, client messages, close codes, images.

Stream frames are binary WebSocket messages: a 24-byte little-endian header, then the
encoded image (``[R, width]`` pixels, RGB)::

    offset  type     field
    0       4 bytes  magic b"SOAT"
    4       uint32   sequence number (0, 1, 2, ... per connection)
    8       uint64   first column of the tile in the endless panorama
    16      uint32   tile width in columns
    20      uint8    format: 0 PNG, 1 JPEG, 2 WebP
    21      3 bytes  zero

With ``batch=k`` in the stream query (1 to ``MAX_BATCH``; default 1: the frames above), each binary
message holds k consecutive frames, each as above, behind their count and each one's length, so
that a proxy in the path forwards one message per k tiles::

    offset  type     field
    0       4 bytes  magic b"SOAB"
    4       uint32   number of frames k
    8       k times: uint32 length n, then n bytes: one frame (header + image)

Sequence numbers count frames (tiles), not messages, so a client that unpacks the messages sees the
same frames in the same order as without ``batch``. A credit asks for one message.

Before the first frame the server sends one JSON text message
``{"type": "hello", ...}``; a JSON ``{"type": "error", "error": ...}`` precedes a
close caused by the client. Clients send JSON text ``{"credit": n}``: the server
sends a frame only against a credit, and never holds more than ``MAX_CREDIT``
unspent, so a slow client is never queued more messages than it asked for.

A stream ends with a WebSocket close code (``CLOSE_*`` below): 1003, 1008, 1009 for a client's
mistake (do not retry); 1011 when the generator failed; 1013 when the server or this client holds
too many streams (retry later); 1000 when it asked for no frame for a while; 1012 when the server
drains (SIGTERM): the frames it had started were all sent first, and the client resumes by
reconnecting with ``x`` = the last frame's first column + its width (the close reason names that
column).

JPEG frames are encoded with libjpeg-turbo (simplejpeg: quality ``JPEG_QUALITY`` and 4:2:0 chroma,
the quantisation and Huffman tables Pillow wrote) or, on a GPU, with nvJPEG (``encoders``).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import simplejpeg
from PIL import Image

from ..errors import SoatError

MAGIC = b"SOAT"
HEADER = struct.Struct("<4sIQIB3x")
BATCH_MAGIC = b"SOAB"
BATCH_HEADER = struct.Struct("<4sI")
FRAME_LENGTH = struct.Struct("<I")
MAX_BATCH = 16  # frames in one message
FORMATS = {"png": 0, "jpeg": 1, "webp": 2}
MAX_WIDTH = 8192  # columns in one HTTP request
MAX_TILE = 2048  # columns in one stream frame
MAX_COLUMN = 2 ** 53 - 1  # exact in a JavaScript number
MAX_SEED = 2 ** 53 - 1
MAX_CREDIT = 32
MAX_MESSAGE = 1024  # bytes of one client message
MAX_EXCLUDED = 16  # replicas one route request may rule out
MAX_REPLICA_NAME = 200  # characters of a replica's name in a route request
JPEG_QUALITY = 90

# WebSocket close codes (RFC 6455 section 7.4.1)
CLOSE_UNSUPPORTED = 1003  # a binary message
CLOSE_POLICY = 1008  # a malformed or disallowed message or query
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BUSY = 1013  # too many streams: try again later
CLOSE_IDLE = 1000  # a stream that asked for no frame for a while: closed normally, reconnect to go on
CLOSE_RECONNECT = 1012  # the server drains (restarts): every started frame was sent; reconnect at the next column
CLOSE_REASON_BYTES = 123  # the most a WebSocket close frame carries


def close_reason(message: str) -> str:
    """``message`` cut to what a WebSocket close frame carries (123 bytes of UTF-8)."""
    return message.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")


class ProtocolError(Exception):
    """A client mistake on a stream: closes that connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class PanoramaQuery:
    seed: int
    x: int
    w: int


@dataclass(frozen=True)
class StreamQuery:
    seed: int
    x: int
    tile: int
    format: str
    batch: int = 1  # frames per message


@dataclass(frozen=True)
class RouteQuery:
    seed: int
    exclude: tuple[str, ...]  # replicas the client could not use


def _int_param(params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise SoatError(f"query parameter {name} is missing; give an integer {lo} <= {name} <= {hi}")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise SoatError(f"{name}={raw!r} is not an integer; give an integer {lo} <= {name} <= {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise SoatError(f"{name}={value} is out of range; allowed: {lo} <= {name} <= {hi}")
    return value


def _check_keys(params, allowed: tuple[str, ...]) -> None:
    for key in params.keys():
        if key not in allowed:
            raise SoatError(f"unknown query parameter {key!r}; allowed: {', '.join(allowed)}")
        if len(params.getlist(key)) > 1:
            raise SoatError(f"query parameter {key} is given more than once")


def parse_panorama_query(params) -> PanoramaQuery:
    """``seed``, ``x`` (first column), ``w`` (columns, at most ``MAX_WIDTH``) from a Starlette QueryParams."""
    _check_keys(params, ("seed", "x", "w"))
    return PanoramaQuery(seed=_int_param(params, "seed", None, 0, MAX_SEED),
                         x=_int_param(params, "x", None, 0, MAX_COLUMN),
                         w=_int_param(params, "w", None, 1, MAX_WIDTH))


def parse_stream_query(params, size: int) -> StreamQuery:
    """``seed`` (default 0), ``x`` (default 0), ``tile`` (default R), ``format`` (default jpeg), ``batch`` (frames
    per message, default 1)."""
    _check_keys(params, ("seed", "x", "tile", "format", "batch"))
    fmt = params.get("format", "jpeg")
    if fmt not in FORMATS:
        raise SoatError(f"format={fmt!r} is not a stream format; use one of {', '.join(FORMATS)}")
    return StreamQuery(seed=_int_param(params, "seed", 0, 0, MAX_SEED),
                       x=_int_param(params, "x", 0, 0, MAX_COLUMN),
                       tile=_int_param(params, "tile", size, 1, MAX_TILE),
                       format=fmt, batch=_int_param(params, "batch", 1, 1, MAX_BATCH))


def parse_route_query(params) -> RouteQuery:
    """``seed`` and ``exclude`` (replica names, comma-separated; default none) of ``/api/route``."""
    _check_keys(params, ("seed", "exclude"))
    names = tuple(name for name in params.get("exclude", "").split(",") if name)
    if len(names) > MAX_EXCLUDED or any(len(name) > MAX_REPLICA_NAME for name in names):
        raise SoatError(f"exclude names more than {MAX_EXCLUDED} replicas or a name longer than {MAX_REPLICA_NAME} "
                        f"characters; name at most {MAX_EXCLUDED} replicas, as /api/route named them")
    return RouteQuery(seed=_int_param(params, "seed", None, 0, MAX_SEED), exclude=names)


def parse_credit(text: str, unspent: int) -> int:
    """A client message ``{"credit": n}``: the number of further frames it grants."""
    if len(text.encode()) > MAX_MESSAGE:
        raise ProtocolError(CLOSE_TOO_BIG, f"message longer than {MAX_MESSAGE} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: brackets nested deeper than the parser goes
        raise ProtocolError(CLOSE_POLICY, 'message is not JSON; send {"credit": n}') from None
    if not isinstance(msg, dict) or set(msg) != {"credit"}:
        raise ProtocolError(CLOSE_POLICY, 'unknown message; the only message is {"credit": n}')
    n = msg["credit"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProtocolError(CLOSE_POLICY, f"credit={n!r} must be an integer >= 1")
    if unspent + n > MAX_CREDIT:
        raise ProtocolError(CLOSE_POLICY, f"credit {unspent} + {n} exceeds the limit of {MAX_CREDIT} unspent frames")
    return n


def frame_header(seq: int, column: int, width: int, fmt: str) -> bytes:
    """The 24-byte header of a frame; the encoded image follows it."""
    return HEADER.pack(MAGIC, seq, column, width, FORMATS[fmt])


def batch_message(frames: list[bytes]) -> bytes:
    """Frames (header + image each) as one batch message."""
    parts = [BATCH_HEADER.pack(BATCH_MAGIC, len(frames))]
    for frame in frames:
        parts += [FRAME_LENGTH.pack(len(frame)), frame]
    return b"".join(parts)


def unpack_message(message: bytes) -> list[tuple[int, int, int, str, bytes]]:
    """The frames of a message, batch or not, each as ``unpack_frame`` gives it (for clients and tests)."""
    if message[:4] != BATCH_MAGIC:
        return [unpack_frame(message)]
    _, count = BATCH_HEADER.unpack_from(message)
    frames, at = [], BATCH_HEADER.size
    for _ in range(count):
        (length,) = FRAME_LENGTH.unpack_from(message, at)
        at += FRAME_LENGTH.size
        frames.append(unpack_frame(message[at:at + length]))
        at += length
    if at != len(message):
        raise ValueError(f"a batch message of {len(message)} bytes whose {count} frames end at byte {at}")
    return frames


def unpack_frame(message: bytes) -> tuple[int, int, int, str, bytes]:
    """``(seq, column, width, format, payload)`` of a frame (for clients and tests)."""
    magic, seq, column, width, code = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise ValueError(f"not a SOAT frame: magic {magic!r}")
    fmt = {v: k for k, v in FORMATS.items()}[code]
    return seq, column, width, fmt, message[HEADER.size:]


def encode_image(pixels: np.ndarray, fmt: str, fast: bool = False) -> bytes:
    """``[H, W, 3]`` uint8 -> PNG / JPEG / WebP bytes (``fast``: cheapest PNG compression).

    JPEG goes straight from the array through libjpeg-turbo, which runs without the GIL; Pillow
    (PNG, WebP) first copies the pixels into an image of its own."""
    if fmt == "jpeg":
        return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=JPEG_QUALITY, colorspace="RGB",
                                      colorsubsampling="420", fastdct=False)
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1 if fast else 6)
    else:
        image.save(buf, format="WEBP", quality=JPEG_QUALITY)
    return buf.getvalue()
