"""Input modulation of the shared-weight conv: ``out[b, c, h, w] = x[b, c, h, w] * s[b, c]``.

torch runs ``x * s[:, :, None, None]`` on a channels_last map through its generic
broadcasting loop (no vector loads); the kernel (``modulate_kernel.py``) walks the map in
its memory order with the style row broadcast along the tile: one read, one write, at
copy speed.
"""

from __future__ import annotations

import torch

from ._dispatch import kernels, use_triton


def modulate_ref(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    return x * style[:, :, None, None]


def modulate(x: torch.Tensor, style: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``x [B, C, H, W] * style [B, C]`` per channel (the runtime's own call: shapes come from the chain).

    Returns ``[B, C, H, W]`` in ``x``'s layout and dtype; rounds as the reference (one product).
    """
    if not use_triton(impl, x, style):
        return modulate_ref(x, style)
    return kernels("modulate").modulate(x, style)
