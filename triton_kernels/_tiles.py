"""Tiling shared by the kernels: a ``[B, C, H, W]`` index space walked in an output's memory order.

The space is a 2-D grid of rows x inner, where the inner dimension is the one with
stride 1 in the output (W for contiguous NCHW, C for channels_last) and rows are the
other three. A program covers a ``[BR, BI]`` tile; the row decomposition (integer
divisions) is done once per row, not per element, so the kernels stay memory-bound.
Every tensor is addressed through its own strides, so inputs may have any layout
(slices, channels_last, broadcast masks) without a copy.

Triton is imported on the first kernel build, never at import time. Triton resolves
a kernel's names in its module's globals (the interpreter re-executes the kernel
source there), so :func:`jit` binds ``tl`` and the tile helpers into the kernel's
module before jitting it.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

tl = None  # triton.language, bound by jit() on first use

TILE = 2048  # elements per program: 16 per thread at 4 warps
MAX_INNER = 256  # inner (contiguous) extent of a tile


def tile_index(B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    """This program's tile: ``b, c, h, w`` index tensors (``[BR, 1]`` or ``[1, BI]``) and the in-bounds mask."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    inner = tl.program_id(1) * BI + tl.arange(0, BI)[None, :]
    if CL:
        w = rows % W
        h = (rows // W) % H
        b = rows // (W * H)
        c = inner
        ok = (b < B) & (c < C)
    else:
        h = rows % H
        c = (rows // H) % C
        b = rows // (H * C)
        w = inner
        ok = (b < B) & (w < W)
    return b, c, h, w, ok


def offset(b, c, h, w, sb, sc, sh, sw):
    """Element offset of ``[b, c, h, w]`` under strides ``sb, sc, sh, sw`` (the batch term in int64)."""
    return b.to(tl.int64) * sb + c * sc + h * sh + w * sw


@functools.cache
def _helpers() -> dict:
    import triton
    import triton.language as language

    globals()["tl"] = language
    return {"tl": language, "tile_index": triton.jit(tile_index), "offset": triton.jit(offset)}


def jit(fn: Callable) -> Callable:
    """``triton.jit(fn)`` for a module-level kernel, with ``tl``, ``tile_index`` and ``offset`` bound in its module."""
    import triton

    fn.__globals__.update(_helpers())
    return triton.jit(fn)


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a channels_last tensor that is not also plain contiguous (C == 1 or 1x1 maps are both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def is_dense_map(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def empty_map(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``shape`` map of ``like``'s dtype, device and layout (NCHW or channels_last)."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tile_shape(rows: int, inner: int, tile: int = TILE) -> tuple[int, int]:
    """``(BR, BI)``: powers of two, ``BI`` covering the inner extent up to ``MAX_INNER``, ``BR * BI <= tile``."""
    bi = min(_pow2(inner), MAX_INNER)
    return min(max(tile // bi, 1), _pow2(rows)), bi


def launch(kernel: Callable, space: Sequence[int], channels_last: bool, args: Sequence, **meta) -> None:
    """Run ``kernel[grid](*args, B, C, H, W, CL=..., BR=..., BI=..., **meta)`` over the ``space`` ``[B, C, H, W]``."""
    B, C, H, W = space
    numel = B * C * H * W
    if numel == 0:
        return
    inner = C if channels_last else W
    rows = numel // inner
    br, bi = tile_shape(rows, inner)
    grid = ((rows + br - 1) // br, (inner + bi - 1) // bi)
    run(kernel, grid, args, B, C, H, W, CL=channels_last, BR=br, BI=bi, **meta)


def run(kernel: Callable, grid: tuple[int, int], args: Sequence, *tail, **meta) -> None:
    # no implicit mul+add fusion: the kernels round each step as torch's elementwise ops do
    kernel[grid](*args, *tail, enable_fp_fusion=False, **meta)


def device_table(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """``rows`` as an int32 ``[max(n, 1), 6]`` tensor on ``device``, copied without a host sync
    (pinned and non-blocking; the kernel always gets a valid pointer, even for no rows)."""
    table = torch.tensor(rows or [(0,) * 6], dtype=torch.int32, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)
