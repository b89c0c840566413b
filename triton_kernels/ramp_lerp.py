"""Ramp lerp: ``out = (1 - a) * x1 + a * x2`` with the SPEC alpha ramp along H or W.

The ramp of length n (the size of the blended axis): ``pad = n // 4`` zeros, then
``linspace(0, 1, n - 2 * pad)``, then ``pad`` ones; ``pad=False`` gives plain
``linspace(0, 1, n)`` (``merge``).

The kernel computes alpha from the index (torch.linspace's formula: ``step * k`` on
the first half, ``1 - step * (m - 1 - k)`` on the second), rounds it to the map's
dtype as the reference does, and lerps in fp32: one read of each input, one write.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import SoatError
from ._dispatch import check_maps, use_triton
from ._tiles import empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built


def ramp(n: int, pad: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """The alpha ramp ``[n]`` in fp32, built as the reference builds it."""
    if not pad:
        return torch.linspace(0, 1, n, device=device)
    alpha = torch.zeros([n])
    p = n // 4
    if p:
        alpha[-p:] = 1
    alpha[p:n - p] = torch.linspace(0, 1, n - 2 * p)
    return alpha.to(device)


def ramp_lerp_ref(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` lerp with the ramp along ``axis`` (2: H, vertical; 3: W, horizontal)."""
    n = x1.shape[axis]
    view = (1, 1, n, 1) if axis == 2 else (1, 1, 1, n)
    alpha = ramp(n, pad, x1.device).view(view).to(x1.dtype)
    return (1 - alpha) * x1 + alpha * x2


def _ramp_lerp_kernel(x1, x2, out, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, sob, soc, soh, sow,
                      pad, m, half, step, B, C, H, W,
                      ALONG_H: tl.constexpr, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    if ALONG_H:
        k = h - pad
    else:
        k = w - pad
    rising = tl.where(k < half, step * k.to(tl.float32), 1.0 - step * (m - 1 - k).to(tl.float32))
    alpha = tl.where(k < 0, 0.0, tl.where(k >= m, 1.0, rising))
    alpha = alpha.to(out.dtype.element_ty).to(tl.float32)
    v1 = tl.load(x1 + offset(b, c, h, w, s1b, s1c, s1h, s1w), mask=ok).to(tl.float32)
    v2 = tl.load(x2 + offset(b, c, h, w, s2b, s2c, s2h, s2w), mask=ok).to(tl.float32)
    res = (1 - alpha) * v1 + alpha * v2
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), res.to(out.dtype.element_ty), mask=ok)


@functools.cache
def _kernel():
    return jit(_ramp_lerp_kernel)


def linspace_constants(m: int) -> tuple[int, float]:
    """``(half, step)`` of ``torch.linspace(0, 1, m)``: entries below ``half`` are ``step * k``,
    the others ``1 - step * (m - 1 - k)``; ``step`` is rounded to fp32 as torch computes it."""
    if m == 1:
        return 1, 0.0  # linspace of one point is [0]
    return m // 2, float(np.float32(1) / np.float32(m - 1))


def ramp_lerp(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True, impl: str = "auto") -> torch.Tensor:
    """Ramp lerp (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x1, x2: ``[B, C, H, W]`` maps of one shape, dtype and device (any strides).
        axis: 2 for a ramp down H (vertical blend), 3 along W (horizontal).
        pad: the SPEC padded ramp (True) or plain linspace (False).
    Returns:
        ``[B, C, H, W]`` in ``x1``'s layout (NCHW or channels_last).
    """
    check_maps({"x1": x1, "x2": x2})
    if axis not in (2, 3):
        raise SoatError(f"axis={axis!r} must be 2 (ramp along H, vertical) or 3 (along W, horizontal)")
    if not isinstance(pad, bool):
        raise SoatError(f"pad={pad!r} must be True (padded ramp) or False (plain linspace)")
    if not use_triton(impl, x1, x2):
        return ramp_lerp_ref(x1, x2, axis, pad)
    n = x1.shape[axis]
    p = n // 4 if pad else 0
    m = n - 2 * p
    out = empty_map(x1.shape, x1)
    args = (x1, x2, out, *x1.stride(), *x2.stride(), *out.stride(), p, m, *linspace_constants(m))
    launch(_kernel(), out.shape, is_channels_last(out), args, ALONG_H=axis == 2)
    return out
