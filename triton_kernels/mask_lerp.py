"""Mask lerp: ``out = (1 - a) * x1 + a * x2`` with ``a`` a mask resized bilinearly to the map.

``a = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=False)`` (no
antialiasing: plain 2-tap sampling even when shrinking), or 0 everywhere when
``zero`` is set (the per-layer cut-off of ``num_blend`` / pose alignment).
A ``[1, 1, 1, 1]`` mask is a scalar alpha.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import use_triton


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The mask at a layer's size, as the reference resizes it."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


def mask_lerp_ref(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool = False) -> torch.Tensor:
    """``x1, x2 [B, C, H, W]``, ``mask [1 or B, 1, Hm, Wm]`` -> ``[B, C, H, W]``."""
    alpha = resize_mask(mask.to(x1.dtype), tuple(x1.shape[-2:]))
    if zero:
        alpha = torch.zeros_like(alpha)
    return (1 - alpha) * x1 + alpha * x2


def mask_lerp(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool = False,
              impl: str = "auto") -> torch.Tensor:
    """Mask lerp (see module docstring); Triton on CUDA, the reference elsewhere."""
    use_triton(impl, x1, x2, mask)
    return mask_lerp_ref(x1, x2, mask, zero)
