"""Shift lerp, the paper's Shift operator: ``f <- lerp(f, Shift(f, d), a_mask)``.

Each move ``(ty, tx, h, w, dy, dx)`` covers the target rectangle ``[ty, ty+h) x [tx, tx+w)``
and reads ``f`` at ``(y - dy, x - dx)``: the patch at ``(ty - dy, tx - dx)`` lands on the
target. Inside a target ``out = (1 - s) * f + s * f_shifted`` with strength ``s``; outside,
``out = f``. All moves read the unmodified ``f``; a later move wins where targets overlap.

The kernel (``shift_lerp_kernel.py``) does every move in one pass: each pixel finds the
last move whose target holds it (the moves sit in a small int32 table on the device),
then reads ``f`` there and, inside a target, at the shifted position; it never reads
``out``.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

from ..errors import SoatError
from ._dispatch import check_int_rows, check_maps, kernels, use_triton

Move = tuple[int, int, int, int, int, int]


def shift_lerp_ref(f: torch.Tensor, moves: Sequence[Move], strength: float = 1.0) -> torch.Tensor:
    """``f [B, C, H, W]`` -> ``[B, C, H, W]``; targets and their sources must lie inside the map."""
    out = f.clone()
    for ty, tx, h, w, dy, dx in moves:
        src = f[..., ty - dy:ty - dy + h, tx - dx:tx - dx + w]
        out[..., ty:ty + h, tx:tx + w] = (1 - strength) * f[..., ty:ty + h, tx:tx + w] + strength * src
    return out


def check_moves(moves: Sequence[Move], height: int, width: int) -> list[Move]:
    """Each move as 6 ints whose target and source rectangles lie inside an ``height x width`` map."""
    checked = check_int_rows(moves, "moves", ("ty", "tx", "h", "w", "dy", "dx"), (0, 0, 0, 0, -height, -width))
    for i, (ty, tx, h, w, dy, dx) in enumerate(checked):
        if not (ty + h <= height and tx + w <= width and 0 <= ty - dy and ty - dy + h <= height
                and 0 <= tx - dx and tx - dx + w <= width):
            raise SoatError(f"moves[{i}]={tuple(moves[i])}: the target and its source (target - (dy, dx)) must lie "
                            f"inside the {height}x{width} map")
    return checked


def shift_lerp(f: torch.Tensor, moves: Sequence[Move], strength: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Shift lerp (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        f: ``[B, C, H, W]`` map (any strides).
        moves: ``(ty, tx, h, w, dy, dx)`` each; rectangles inside the map.
        strength: alpha inside the targets.
    Returns:
        ``[B, C, H, W]`` in ``f``'s layout (NCHW or channels_last).
    """
    check_maps({"f": f})
    moves = check_moves(moves, *f.shape[-2:])
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise SoatError(f"strength={strength!r} must be a number")
    if not use_triton(impl, f):
        return shift_lerp_ref(f, moves, strength)
    return kernels("shift_lerp").shift_lerp(f, moves, strength)
