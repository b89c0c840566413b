"""Region copy: rectangles of ``src`` written into a copy of ``dst`` (patch swap).

Each copy ``(dy, dx, sy, sx, h, w)`` does ``out[..., dy:dy+h, dx:dx+w] = src[..., sy:sy+h, sx:sx+w]``;
all read ``src`` (never what was written), and a later copy wins where targets overlap.

The kernel does every copy in one pass: each pixel finds the last copy whose target
holds it (the copies sit in a small int32 table on the device) and reads either
``src`` at the matching position or ``dst`` in place, never both and never ``out``.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from ..errors import SoatError
from ._dispatch import check_int_rows, check_maps, use_triton
from ._tiles import device_table, empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built

Copy = tuple[int, int, int, int, int, int]
FIELDS = ("dy", "dx", "sy", "sx", "h", "w")


def region_copy_ref(dst: torch.Tensor, src: torch.Tensor, copies: Sequence[Copy]) -> torch.Tensor:
    """``dst, src [B, C, H, W]`` -> a new ``[B, C, H, W]``; rectangles must lie inside both maps."""
    out = dst.clone()
    for dy, dx, sy, sx, h, w in copies:
        out[..., dy:dy + h, dx:dx + w] = src[..., sy:sy + h, sx:sx + w]
    return out


def _region_copy_kernel(dst, src, out, copies, n_copies, sdb, sdc, sdh, sdw, ssb, ssc, ssh, ssw,
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


@functools.cache
def _kernel():
    return jit(_region_copy_kernel)


def check_copies(copies: Sequence[Copy], height: int, width: int) -> list[Copy]:
    """Each copy as 6 ints whose rectangles lie inside ``height x width`` maps."""
    checked = check_int_rows(copies, "copies", FIELDS, (0,) * 6)
    for i, (dy, dx, sy, sx, h, w) in enumerate(checked):
        if max(dy, sy) + h > height or max(dx, sx) + w > width:
            raise SoatError(f"copies[{i}]={tuple(copies[i])}: both rectangles must lie inside the {height}x{width} maps")
    return checked


def region_copy(dst: torch.Tensor, src: torch.Tensor, copies: Sequence[Copy], impl: str = "auto") -> torch.Tensor:
    """Region copy (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        dst, src: ``[B, C, H, W]`` maps of one shape, dtype and device (any strides).
        copies: ``(dy, dx, sy, sx, h, w)`` each; rectangles inside the maps.
    Returns:
        a new ``[B, C, H, W]`` in ``dst``'s layout (NCHW or channels_last).
    """
    check_maps({"dst": dst, "src": src})
    copies = check_copies(copies, *dst.shape[-2:])
    if not use_triton(impl, dst, src):
        return region_copy_ref(dst, src, copies)
    out = empty_map(dst.shape, dst)
    table = device_table(copies, dst.device)
    args = (dst, src, out, table, len(copies), *dst.stride(), *src.stride(), *out.stride())
    launch(_kernel(), out.shape, is_channels_last(out), args)
    return out
