"""Mask lerp: ``out = (1 - a) * x1 + a * x2`` with ``a`` a mask resized bilinearly to the map.

``a = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=False)`` (no
antialiasing: plain 2-tap sampling even when shrinking), or 0 everywhere when
``zero`` is set (the per-layer cut-off of ``num_blend`` / pose alignment).
A ``[1, 1, 1, 1]`` mask is a scalar alpha.

The kernel (``mask_lerp_kernel.py``) samples the full-resolution mask at each output
pixel with PyTorch's rules (source index ``scale * (i + 0.5) - 0.5`` clamped at 0,
``scale = in / out`` in fp32, the upper tap clamped to the edge), rounds alpha to the map's dtype as the reference
does, and lerps in fp32. The resized mask is never materialised: each program computes
alpha for its pixels once and applies it to several channels. With ``zero`` the kernel
is a copy of ``x1`` and reads neither ``x2`` nor the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SoatError
from ._dispatch import check_maps, kernels, use_triton

MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


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


def check_mask(mask: torch.Tensor, batch: int, device: torch.device | None = None) -> None:
    """``mask`` must be a float ``[1 or batch, 1, Hm, Wm]`` tensor with pixels (on ``device``, where given)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        batches = "1" if batch == 1 else f"1 or {batch}"
        raise SoatError(f"mask must be a tensor [{batches}, 1, Hm, Wm] (the images have batch {batch}); got {got}")
    if mask.shape[2] == 0 or mask.shape[3] == 0:
        raise SoatError(f"mask has shape {list(mask.shape)}; it needs at least one pixel")
    if mask.dtype not in MASK_DTYPES:
        raise SoatError(f"mask has dtype {mask.dtype}; use a floating-point mask")
    if device is not None and mask.device != device:
        raise SoatError(f"mask is on {mask.device} but the maps are on {device}; put them on one device")


def mask_lerp(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool = False,
              impl: str = "auto") -> torch.Tensor:
    """Mask lerp (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x1, x2: ``[B, C, H, W]`` maps of one shape, dtype and device (any strides).
        mask: ``[1 or B, 1, Hm, Wm]`` alpha in [0, 1] at any resolution, any float dtype.
        zero: alpha 0 everywhere (the output is ``x1``).
    Returns:
        ``[B, C, H, W]`` in ``x1``'s layout (NCHW or channels_last).
    """
    check_maps({"x1": x1, "x2": x2})
    check_mask(mask, x1.shape[0], x1.device)
    if not use_triton(impl, x1, x2, mask):
        return mask_lerp_ref(x1, x2, mask, zero)
    return kernels("mask_lerp").mask_lerp(x1, x2, mask, bool(zero))
