"""Jit helpers of the tiled kernels: a program's tile of a ``[B, C, H, W]`` space, and strided offsets.

The launchers size the tiles and the grid with ``_tiles.tile_grid``; see ``_tiles.py`` for
the walk. Every launch passes ``enable_fp_fusion=False``: Triton would otherwise fuse a
multiply and an add into one FMA (one rounding), where torch's elementwise ops round each
step, and the kernels must round as their references do.
"""

import triton
import triton.language as tl


@triton.jit
def tile_index(B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    """This program's tile: ``b, c, h, w`` index tensors (``[BR, 1]`` or ``[1, BI]``) and the in-bounds mask."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    inner = tl.program_id(1) * BI + tl.arange(0, BI)[None, :]
    if CL:
        w = rows % W
        h = (rows // W) % H
        b = rows // (W * H)
        c = inner
        ok = (b < B) & (c < C)
    else:
        h = rows % H
        c = (rows // H) % C
        b = rows // (H * C)
        w = inner
        ok = (b < B) & (w < W)
    return b, c, h, w, ok


@triton.jit
def offset(b, c, h, w, sb, sc, sh, sw):
    """Element offset of ``[b, c, h, w]`` under strides ``sb, sc, sh, sw`` (the batch term in int64)."""
    return b.to(tl.int64) * sb + c * sc + h * sh + w * sw
