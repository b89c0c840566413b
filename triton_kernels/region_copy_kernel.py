"""Triton kernel of the region copy (``region_copy.py``): every copy in one pass, a table lookup per pixel."""

import torch
import triton
import triton.language as tl

from ._tiles import device_table, empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index


@triton.jit
def region_copy_kernel(dst, src, out, copies, n_copies, sdb, sdc, sdh, sdw, ssb, ssc, ssh, ssw,
                       sob, soc, soh, sow, B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    y = h + w * 0  # both indices at the full tile shape
    x = w + h * 0
    hit = y < 0
    sy = y
    sx = x
    for i in range(n_copies):
        ty = tl.load(copies + 6 * i)
        tx = tl.load(copies + 6 * i + 1)
        inside = (y >= ty) & (y < ty + tl.load(copies + 6 * i + 4))
        inside = inside & (x >= tx) & (x < tx + tl.load(copies + 6 * i + 5))
        sy = tl.where(inside, y - ty + tl.load(copies + 6 * i + 2), sy)
        sx = tl.where(inside, x - tx + tl.load(copies + 6 * i + 3), sx)
        hit = hit | inside
    from_src = tl.load(src + offset(b, c, sy, sx, ssb, ssc, ssh, ssw), mask=ok & hit)
    from_dst = tl.load(dst + offset(b, c, h, w, sdb, sdc, sdh, sdw), mask=ok & ~hit)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), tl.where(hit, from_src, from_dst), mask=ok)


def region_copy(dst: torch.Tensor, src: torch.Tensor, copies: list[tuple[int, ...]]) -> torch.Tensor:
    """``dst, src [B, C, H, W]`` and checked ``(dy, dx, sy, sx, h, w)`` copies -> a new map in ``dst``'s layout."""
    out = empty_map(dst.shape, dst)
    table = device_table(copies, dst.device)
    cl = is_channels_last(out)
    grid, br, bi = tile_grid(out.shape, cl)
    region_copy_kernel[grid](dst, src, out, table, len(copies), *dst.stride(), *src.stride(), *out.stride(),
                             *out.shape, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out
