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

from typing import Callable, Sequence

import torch

TILE = 2048  # elements per program: 16 per thread at 4 warps
MAX_INNER = 256  # inner (contiguous) extent of a tile
SYMBOLIC_INNER = 64  # the inner extent of a tile over a traced NCHW map, whose width is not known


def direct(kernel: Callable) -> Callable:
    """A kernel launched as it is: the launchers' default. ``torch.library.wrap_triton`` in its place makes the
    launch traceable into a graph (``packaged_ops.py``); in eager calls that path costs a dispatch per launch."""
    return kernel


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a channels_last tensor that is not also plain contiguous (C == 1 or 1x1 maps are both).

    A traced map (symbolic sizes, ``packaged_ops.py``) is read from its channel stride alone, decided without
    comparing a symbolic size: a contiguity test there is a symbolic bool, which the traced kernel launch
    would specialize (torch 2.11 exports then fail with "Constraints violated").
    """
    if any(isinstance(n, torch.SymInt) for n in t.shape):
        from torch.fx.experimental.symbolic_shapes import statically_known_true  # tracing only: a slow import
        return statically_known_true(t.stride(1) == 1) and statically_known_true(t.shape[1] != 1)
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def is_dense_map(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def empty_map(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised ``shape`` map of ``like``'s dtype, device and layout (NCHW or channels_last).

    Made by ``empty_strided``: Inductor (torch 2.11) compiles a traced ``empty(memory_format=channels_last)``
    into a kernel that fills the map with NaN, a full write per call (bench/NOTES.md, round 6).
    """
    B, C, H, W = shape
    strides = (H * W * C, 1, W * C, C) if is_channels_last(like) else (C * H * W, H * W, W, 1)
    return torch.empty_strided(tuple(shape), strides, dtype=like.dtype, device=like.device)


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tile_shape(rows: int | torch.SymInt, inner: int | torch.SymInt, tile: int = TILE) -> tuple[int, int]:
    """``(BR, BI)``: powers of two, ``BI`` covering the inner extent up to ``MAX_INNER``, ``BR * BI <= tile``.

    ``BR`` shrinks to a small map's row count. In a launch traced by ``torch.export`` (``packaged_ops.py``)
    a symbolic row count keeps the full tile and a symbolic inner extent (W of an NCHW map) gets
    ``SYMBOLIC_INNER``: block sizes are compile-time constants, and deriving one from a symbolic size would
    specialize the traced graph to the example's size.
    """
    bi = min(_pow2(inner), MAX_INNER) if isinstance(inner, int) else SYMBOLIC_INNER
    br = max(tile // bi, 1)
    return (min(br, _pow2(rows)) if isinstance(rows, int) else br), bi


def tile_grid(space: Sequence[int | torch.SymInt], channels_last: bool,
              tile: int = TILE) -> tuple[tuple[int, int], int, int]:
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
