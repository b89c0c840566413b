"""Triton kernel of the shift lerp (``shift_lerp.py``): every move in one pass, a table lookup per pixel."""

import torch
import triton
import triton.language as tl

from ._tiles import device_table, empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index


@triton.jit
def shift_lerp_kernel(f, out, moves, n_moves, keep, strength, sfb, sfc, sfh, sfw, sob, soc, soh, sow,
                      B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    y = h + w * 0  # both indices at the full tile shape
    x = w + h * 0
    hit = y < 0
    dy = y * 0
    dx = x * 0
    for i in range(n_moves):
        ty = tl.load(moves + 6 * i)
        tx = tl.load(moves + 6 * i + 1)
        inside = (y >= ty) & (y < ty + tl.load(moves + 6 * i + 2))
        inside = inside & (x >= tx) & (x < tx + tl.load(moves + 6 * i + 3))
        dy = tl.where(inside, tl.load(moves + 6 * i + 4), dy)
        dx = tl.where(inside, tl.load(moves + 6 * i + 5), dx)
        hit = hit | inside
    v = tl.load(f + offset(b, c, h, w, sfb, sfc, sfh, sfw), mask=ok)
    shifted = tl.load(f + offset(b, c, y - dy, x - dx, sfb, sfc, sfh, sfw), mask=ok & hit)
    mixed = keep * v.to(tl.float32) + strength * shifted.to(tl.float32)
    res = tl.where(hit, mixed.to(out.dtype.element_ty), v)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), res, mask=ok)


def shift_lerp(f: torch.Tensor, moves: list[tuple[int, ...]], strength: float) -> torch.Tensor:
    """``f [B, C, H, W]`` and checked ``(ty, tx, h, w, dy, dx)`` moves -> a new map in ``f``'s layout."""
    out = empty_map(f.shape, f)
    table = device_table(moves, f.device)
    cl = is_channels_last(out)
    grid, br, bi = tile_grid(out.shape, cl)
    shift_lerp_kernel[grid](f, out, table, len(moves), float(1 - strength), float(strength), *f.stride(),
                            *out.stride(), *out.shape, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out
