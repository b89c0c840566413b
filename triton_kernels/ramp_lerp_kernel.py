"""Triton kernel of the ramp lerp (``ramp_lerp.py``): alpha computed from the index, one pass."""

import numpy as np
import torch
import triton
import triton.language as tl

from ._tiles import empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index


@triton.jit
def ramp_lerp_kernel(x1, x2, out, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, sob, soc, soh, sow,
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


def linspace_constants(m: int) -> tuple[int, float]:
    """``(half, step)`` of ``torch.linspace(0, 1, m)``: entries below ``half`` are ``step * k``,
    the others ``1 - step * (m - 1 - k)``; ``step`` is rounded to fp32 as torch computes it."""
    if m == 1:
        return 1, 0.0  # linspace of one point is [0]
    return m // 2, float(np.float32(1) / np.float32(m - 1))


def ramp_lerp(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool) -> torch.Tensor:
    """``[B, C, H, W]`` lerp with the ramp along ``axis`` (2 or 3), in ``x1``'s layout."""
    n = x1.shape[axis]
    p = n // 4 if pad else 0
    m = n - 2 * p
    half, step = linspace_constants(m)
    out = empty_map(x1.shape, x1)
    cl = is_channels_last(out)
    grid, br, bi = tile_grid(out.shape, cl)
    ramp_lerp_kernel[grid](x1, x2, out, *x1.stride(), *x2.stride(), *out.stride(), p, m, half, step, *out.shape,
                           ALONG_H=axis == 2, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out
