"""Triton kernel of the input modulation (``modulate.py``): the map walked in its memory order."""

from typing import Callable

import torch
import triton
import triton.language as tl

from ._tiles import direct, empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index


@triton.jit
def modulate_kernel(x, style, out, sxb, sxc, sxh, sxw, ssb, ssc, sob, soc, soh, sow, B, C, H, W,
                    CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    v = tl.load(x + offset(b, c, h, w, sxb, sxc, sxh, sxw), mask=ok).to(tl.float32)
    s = tl.load(style + b * ssb + c * ssc, mask=ok).to(tl.float32)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), (v * s).to(out.dtype.element_ty), mask=ok)


def modulate(x: torch.Tensor, style: torch.Tensor, wrap: Callable = direct) -> torch.Tensor:
    """``x [B, C, H, W] * style [B, C]`` (any strides: a style list's entries are column slices of one buffer)
    per channel -> ``[B, C, H, W]`` in ``x``'s layout (``wrap``: ``_tiles.direct``)."""
    out = empty_map(x.shape, x)
    cl = is_channels_last(x)
    grid, br, bi = tile_grid(x.shape, cl)
    wrap(modulate_kernel)[grid](x, style, out, *x.stride(), *style.stride(), *out.stride(), *x.shape,
                                CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out
