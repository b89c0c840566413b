"""Triton kernels of the column ops (``columns.py``): both copy, so outputs equal the reference bit for bit."""

import torch
import triton
import triton.language as tl

from ._tiles import empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index


@triton.jit
def concat_w_kernel(x1, x2, out, W1, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, sob, soc, soh, sow,
                    B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    left = w < W1
    v1 = tl.load(x1 + offset(b, c, h, w, s1b, s1c, s1h, s1w), mask=ok & left)
    v2 = tl.load(x2 + offset(b, c, h, w - W1, s2b, s2c, s2h, s2w), mask=ok & ~left)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), tl.where(left, v1, v2), mask=ok)


@triton.jit
def copy_kernel(src, dst, ssb, ssc, ssh, ssw, sdb, sdc, sdh, sdw,
                B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    v = tl.load(src + offset(b, c, h, w, ssb, ssc, ssh, ssw), mask=ok)
    tl.store(dst + offset(b, c, h, w, sdb, sdc, sdh, sdw), v, mask=ok)


def concat_w(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W1]``, ``[B, C, H, W2]`` -> ``[B, C, H, W1 + W2]`` in ``x1``'s layout, one launch."""
    b, c, h, w1 = x1.shape
    out = empty_map((b, c, h, w1 + x2.shape[3]), x1)
    cl = is_channels_last(out)
    grid, br, bi = tile_grid(out.shape, cl)
    concat_w_kernel[grid](x1, x2, out, w1, *x1.stride(), *x2.stride(), *out.stride(), *out.shape,
                          CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out


def place_columns(out: torch.Tensor, span: torch.Tensor, out_col: int, span_col: int, width: int) -> torch.Tensor:
    """``out[..., out_col:out_col+width] = span[..., span_col:span_col+width]`` through strided
    views (the span is never gathered into a temporary); returns ``out``."""
    src = span[..., span_col:span_col + width]
    dst = out[..., out_col:out_col + width]
    cl = is_channels_last(out)
    grid, br, bi = tile_grid(dst.shape, cl)
    copy_kernel[grid](src, dst, *src.stride(), *dst.stride(), *dst.shape, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out
