"""Panorama geometry and stitching, shared by the finite panorama and the endless one.

Span ``S_i = merge_extension(sigma_i, sigma_{i+1})`` is ``R x 2R`` (docs/contract.md#panorama). With the
pad ``p = 2R // 4``, span 0 contributes its columns ``[0, R + p)``, every later span
``[p, 2R - p)``, and the last span of a finite panorama also gives its right edge, so it
contributes up to ``2R``. The finite panorama of N images is ``2R + (N - 2) R`` wide; the
endless one goes on with further spans.

A ``Piece(index, lo, hi)`` names span-local columns ``[lo, hi)`` of span ``index``; a list
of pieces, in order, describes an output column range. ``stitch`` places each piece's
columns one after another into the output, from per-span *parts*: the columns each span
contributes (``span_columns``), as torch tensors ``[B, C, H, w]`` or as NumPy images
``[H, w, C]`` (the server's uint8 pixels).

Public API (every name here is public):
    ``span_pad(size)``                          the pad p.
    ``span_columns(size, index, last=False)``   the ``[lo, hi)`` a span contributes.
    ``panorama_width(size, n)``                 the finite panorama's width.
    ``panorama_pieces(size, n)``                the finite panorama's pieces (whole spans).
    ``column_pieces(size, start, width)``       the endless panorama's pieces covering a column range.
    ``stitch(size, pieces, parts, width)``      the output from the parts of the pieces' spans.
    ``Piece``                                   ``(index, lo, hi)``.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, TypeVar

import numpy as np
import torch

from ...triton_kernels import ops as K

__all__ = ["Piece", "span_pad", "span_columns", "panorama_width", "panorama_pieces", "column_pieces", "stitch"]

Part = TypeVar("Part", torch.Tensor, np.ndarray)


class Piece(NamedTuple):
    """Span-local columns ``[lo, hi)`` of span ``index``."""

    index: int
    lo: int
    hi: int


def span_pad(size: int) -> int:
    """The pad ``p = 2R // 4`` that every span leaves out on a side it shares with a neighbour."""
    return 2 * size // 4


def span_columns(size: int, index: int, last: bool = False) -> tuple[int, int]:
    """The span-local ``[lo, hi)`` columns span ``index`` contributes to the panorama.

    Span 0 gives ``[0, R + p)``, later spans ``[p, 2R - p)``; ``last`` (the final span of a
    finite panorama) extends ``hi`` to the span's right edge ``2R``.
    """
    p = span_pad(size)
    lo, hi = (0, size + p) if index == 0 else (p, 2 * size - p)
    return lo, 2 * size if last else hi


def panorama_width(size: int, n: int) -> int:
    """Width of the finite panorama of ``n`` images: ``2R + (n - 2) R``."""
    return 2 * size + (n - 2) * size


def panorama_pieces(size: int, n: int) -> list[Piece]:
    """The finite panorama of ``n`` images: for each of its ``n - 1`` spans, the columns it contributes."""
    return [Piece(i, *span_columns(size, i, last=i == n - 2)) for i in range(n - 1)]


def column_pieces(size: int, start: int, width: int) -> list[Piece]:
    """Cover columns ``[start, start + width)`` of the endless panorama with pieces, in order."""
    head_hi = span_columns(size, 0)[1]
    lo, hi = span_columns(size, 1)
    step = hi - lo
    pieces = []
    col, stop = start, start + width
    while col < stop:
        if col < head_hi:
            index, local, end = 0, col, head_hi
        else:
            index, offset = divmod(col - head_hi, step)
            index, local, end = index + 1, lo + offset, hi
        n = min(stop - col, end - local)
        pieces.append(Piece(index, local, local + n))
        col += n
    return pieces


def stitch(size: int, pieces: Iterable[Piece], parts: Iterable[Part], width: int) -> Part:
    """Place the pieces' columns one after another into a new output ``width`` columns wide.

    Args:
        size: R, the model size (gives each part's first span-local column, ``span_columns``).
        pieces: the pieces, in output order.
        parts: for each piece, the columns its span contributes: torch ``[B, C, H, w]``
            (placed with ``place_columns``) or NumPy ``[H, w, C]``. Read lazily, one at a
            time, so a generator of parts keeps a single span alive.
        width: the output width (the pieces' total width).
    Returns:
        torch ``[B, C, H, width]`` (contiguous, the parts' device and dtype) or NumPy
        ``[H, width, C]`` (the parts' dtype), as the parts are.
    """
    out = place = None
    dst = 0
    for piece, part in zip(pieces, parts):
        if out is None:
            out, place = _output(part, width)
        n = piece.hi - piece.lo
        place(out, part, dst, piece.lo - span_columns(size, piece.index)[0], n)
        dst += n
    return out


def _output(part: Part, width: int) -> tuple[Part, Callable[[Part, Part, int, int, int], object]]:
    """An empty output like ``part`` but ``width`` wide, and the function that places columns into it."""
    if isinstance(part, torch.Tensor):
        return part.new_empty(*part.shape[:3], width), K.place_columns
    return np.empty((part.shape[0], width, *part.shape[2:]), part.dtype), _place_hwc


def _place_hwc(out: np.ndarray, part: np.ndarray, dst: int, src: int, n: int) -> None:
    out[:, dst:dst + n] = part[:, src:src + n]
