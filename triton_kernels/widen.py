"""Widen features and the RGB skip together (the ``expand`` task).

``horizontal``: nearest resize to (H, 2W), every column duplicated; ``vertical``:
nearest resize to (2H, W), every row duplicated; any padding mode (``reflect``,
``replicate``, ``circular``, ``constant``): pad ``W // 2`` columns on each side
with ``F.pad`` semantics (``reflect`` mirrors without repeating the edge).

One launch widens both maps: the kernel (``widen_kernel.py``) walks the features and the
skip as one map of ``C + C_skip`` channels, each output pixel reading its one source
pixel (a gather, no arithmetic), so outputs equal the reference bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SoatError
from ._dispatch import check_maps, kernels, use_triton

STRETCH_MODES = ("horizontal", "vertical")
PAD_MODES = ("reflect", "replicate", "circular", "constant")
MODES = STRETCH_MODES + PAD_MODES


def widen_one_ref(x: torch.Tensor, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    if mode == "horizontal":
        return F.interpolate(x, size=(h, 2 * w), mode="nearest")
    if mode == "vertical":
        return F.interpolate(x, size=(2 * h, w), mode="nearest")
    return F.pad(x, (w // 2, w // 2, 0, 0), mode)


def widen_ref(x: torch.Tensor, skip: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, C, H, W]``, ``skip [B, 3, H, W]`` -> both widened the same way."""
    return widen_one_ref(x, mode), widen_one_ref(skip, mode)


def widened_size(height: int, width: int, mode: str) -> tuple[int, int]:
    if mode == "horizontal":
        return height, 2 * width
    if mode == "vertical":
        return 2 * height, width
    return height, width + 2 * (width // 2)


def widen(x: torch.Tensor, skip: torch.Tensor, mode: str, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Widen (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x: ``[B, C, H, W]`` features; skip: ``[B, C_skip, H, W]`` RGB skip (any strides).
        mode: one of ``MODES``.
    Returns:
        both maps widened, each in its input's layout (NCHW or channels_last).
    """
    check_maps({"x": x, "skip": skip}, same="BHW")
    if mode not in MODES:
        raise SoatError(f"mode={mode!r} is not a widen mode; use one of {', '.join(MODES)}")
    if not use_triton(impl, x, skip):
        return widen_ref(x, skip, mode)
    return kernels("widen").widen(x, skip, mode)
