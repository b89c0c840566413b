"""Launch geometry shared by the kernels (torch side; the jit helpers are in ``tiles_kernel.py``).

Most kernels walk a ``[B, C, H, W]`` index space in an output's memory order, as a 2-D
grid of rows x inner: the inner dimension is the one with stride 1 in the output (W for
contiguous NCHW, C for channels_last), rows are the other three. A program covers a
``[BR, BI]`` tile; the row decomposition (integer divisions) is done once per row, not
per element, so the kernels stay memory-bound. Every tensor is addressed through its
own strides, so inputs may have any layout (slices, channels_last, broadcast masks)
without a copy.

This module imports no Triton: the op modules use it before deciding to launch.
"""

from __future__ import annotations

from typing import Sequence

import torch

TILE = 2048  # elements per program: 16 per thread at 4 warps
MAX_INNER = 256  # inner (contiguous) extent of a tile


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a channels_last tensor that is not also plain contiguous (C == 1 or 1x1 maps are both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def is_dense_map(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def empty_map(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``shape`` map of ``like``'s dtype, device and layout (NCHW or channels_last)."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tile_shape(rows: int, inner: int, tile: int = TILE) -> tuple[int, int]:
    """``(BR, BI)``: powers of two, ``BI`` covering the inner extent up to ``MAX_INNER``, ``BR * BI <= tile``."""
    bi = min(_pow2(inner), MAX_INNER)
    return min(max(tile // bi, 1), _pow2(rows)), bi


def tile_grid(space: Sequence[int], channels_last: bool, tile: int = TILE) -> tuple[tuple[int, int], int, int]:
    """``(grid, BR, BI)`` to walk ``space = [B, C, H, W]`` in ``[BR, BI]`` tiles, inner dimension
    C if ``channels_last`` else W. An empty space gives an empty grid (a launch that runs nothing)."""
    B, C, H, W = space
    inner, rows = (C, B * H * W) if channels_last else (W, B * C * H)
    br, bi = tile_shape(rows, inner, tile)
    return (cdiv(rows, br), cdiv(inner, bi)), br, bi


def device_table(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """``rows`` as an int32 ``[max(n, 1), 6]`` tensor on ``device``, copied without a host sync
    (pinned and non-blocking; the kernel always gets a valid pointer, even for no rows)."""
    table = torch.tensor(rows or [(0,) * 6], dtype=torch.int32, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)
