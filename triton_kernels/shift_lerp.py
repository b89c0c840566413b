"""Shift lerp, the paper's Shift operator: ``f <- lerp(f, Shift(f, d), a_mask)``.

Each move ``(ty, tx, h, w, dy, dx)`` covers the target rectangle ``[ty, ty+h) x [tx, tx+w)``
and reads ``f`` at ``(y - dy, x - dx)``: the patch at ``(ty - dy, tx - dx)`` lands on the
target. Inside a target ``out = (1 - s) * f + s * f_shifted`` with strength ``s``; outside,
``out = f``. All moves read the unmodified ``f``; a later move wins where targets overlap.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._dispatch import use_triton

Move = tuple[int, int, int, int, int, int]


def shift_lerp_ref(f: torch.Tensor, moves: Sequence[Move], strength: float = 1.0) -> torch.Tensor:
    """``f [B, C, H, W]`` -> ``[B, C, H, W]``; targets and their sources must lie inside the map."""
    out = f.clone()
    for ty, tx, h, w, dy, dx in moves:
        src = f[..., ty - dy:ty - dy + h, tx - dx:tx - dx + w]
        out[..., ty:ty + h, tx:tx + w] = (1 - strength) * f[..., ty:ty + h, tx:tx + w] + strength * src
    return out


def shift_lerp(f: torch.Tensor, moves: Sequence[Move], strength: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Shift lerp (see module docstring); Triton on CUDA, the reference elsewhere."""
    use_triton(impl, f)
    return shift_lerp_ref(f, moves, strength)
