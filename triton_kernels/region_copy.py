"""Region copy: rectangles of ``src`` written into a copy of ``dst`` (patch swap).

Each copy ``(dy, dx, sy, sx, h, w)`` does ``out[..., dy:dy+h, dx:dx+w] = src[..., sy:sy+h, sx:sx+w]``;
all read ``src`` (never what was written), and a later copy wins where targets overlap.

The kernel (``region_copy_kernel.py``) does every copy in one pass: each pixel finds the
last copy whose target holds it (the copies sit in a small int32 table on the device)
and reads either ``src`` at the matching position or ``dst`` in place, never both and
never ``out``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import SoatError
from ._dispatch import check_int_rows, check_maps, kernels, use_triton

Copy = tuple[int, int, int, int, int, int]
FIELDS = ("dy", "dx", "sy", "sx", "h", "w")


def region_copy_ref(dst: torch.Tensor, src: torch.Tensor, copies: Sequence[Copy]) -> torch.Tensor:
    """``dst, src [B, C, H, W]`` -> a new ``[B, C, H, W]``; rectangles must lie inside both maps."""
    out = dst.clone()
    for dy, dx, sy, sx, h, w in copies:
        out[..., dy:dy + h, dx:dx + w] = src[..., sy:sy + h, sx:sx + w]
    return out


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
    return kernels("region_copy").region_copy(dst, src, copies)
