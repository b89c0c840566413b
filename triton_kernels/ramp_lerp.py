"""Ramp lerp: ``out = (1 - a) * x1 + a * x2`` with the contract's alpha ramp along H or W
(docs/contract.md#ramps).

The ramp of length n (the size of the blended axis): ``pad = n // 4`` zeros, then
``linspace(0, 1, n - 2 * pad)``, then ``pad`` ones; ``pad=False`` gives plain
``linspace(0, 1, n)`` (``merge``).

The kernel (``ramp_lerp_kernel.py``) computes alpha from the index (torch.linspace's
formula: ``step * k`` on the first half, ``1 - step * (m - 1 - k)`` on the second),
rounds it to the map's dtype as the reference does, and lerps in fp32: one read of each
input, one write.
"""

from __future__ import annotations

import torch

from ..errors import SoatError
from ._dispatch import check_maps, kernels, use_triton


def ramp(n: int, pad: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """The alpha ramp ``[n]`` in fp32, built as the reference builds it, on ``device`` (no host copy:
    it may be built inside a CUDA-graph capture; CPU and CUDA linspace share one formula)."""
    if not pad:
        return torch.linspace(0, 1, n, device=device)
    alpha = torch.zeros([n], device=device)
    p = n // 4
    if p:
        alpha[-p:] = 1
    alpha[p:n - p] = torch.linspace(0, 1, n - 2 * p, device=device)
    return alpha


def ramp_lerp_ref(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` lerp with the ramp along ``axis`` (2: H, vertical; 3: W, horizontal)."""
    n = x1.shape[axis]
    view = (1, 1, n, 1) if axis == 2 else (1, 1, 1, n)
    alpha = ramp(n, pad, x1.device).view(view).to(x1.dtype)
    return (1 - alpha) * x1 + alpha * x2


def ramp_lerp(x1: torch.Tensor, x2: torch.Tensor, axis: int, pad: bool = True, impl: str = "auto") -> torch.Tensor:
    """Ramp lerp (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x1, x2: ``[B, C, H, W]`` maps of one shape, dtype and device (any strides).
        axis: 2 for a ramp down H (vertical blend), 3 along W (horizontal).
        pad: the padded ramp of docs/contract.md#ramps (True) or plain linspace (False).
    Returns:
        ``[B, C, H, W]`` in ``x1``'s layout (NCHW or channels_last).
    """
    check_maps({"x1": x1, "x2": x2})
    if axis not in (2, 3):
        raise SoatError(f"axis={axis!r} must be 2 (ramp along H, vertical) or 3 (along W, horizontal)")
    if not isinstance(pad, bool):
        raise SoatError(f"pad={pad!r} must be True (padded ramp) or False (plain linspace)")
    if not use_triton(impl, x1, x2):
        return ramp_lerp_ref(x1, x2, axis, pad)
    return kernels("ramp_lerp").ramp_lerp(x1, x2, axis, pad)
