"""Ramp lerp: ``out = (1 - a) * x1 + a * x2`` with the SPEC alpha ramp along H or W.

The ramp of length n (the size of the blended axis): ``pad = n // 4`` zeros, then
``linspace(0, 1, n - 2 * pad)``, then ``pad`` ones; ``pad=False`` gives plain
``linspace(0, 1, n)`` (``merge``).
"""

from __future__ import annotations

import torch

from ._dispatch import use_triton


def ramp(n: int, pad: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """The alpha ramp ``[n]`` in fp32, built as the reference builds it."""
    if not pad:
        return torch.linspace(0, 1, n, device=device)
    alpha = torch.zeros([n])
    p = n // 4
    if p:
        alpha[-p:] = 1
    alpha[p:n - p] = torch.linspace(0, 1, n - 2 * p)
    return alpha.to(device)


def ramp_lerp_ref(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` lerp with the ramp along ``axis`` (2: H, vertical; 3: W, horizontal)."""
    n = x1.shape[axis]
    view = (1, 1, n, 1) if axis == 2 else (1, 1, 1, n)
    alpha = ramp(n, pad, x1.device).view(view).to(x1.dtype)
    return (1 - alpha) * x1 + alpha * x2


def ramp_lerp(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True, impl: str = "auto") -> torch.Tensor:
    """Ramp lerp (see module docstring); Triton on CUDA, the reference elsewhere."""
    use_triton(impl, x1, x2)
    return ramp_lerp_ref(x1, x2, axis, pad)
