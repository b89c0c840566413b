"""Demodulation factors of a styled conv: ``d[b, o] = rsqrt(sum_i s[b, i]^2 * wsq[i, o] + 1e-8)``.

``wsq[i, o]`` is the sum over the kernel taps of the squared (scaled) weight. torch runs
this as four launches (square, matmul, add, rsqrt), which at batch 1 cost more than
the arithmetic; the kernel (``demod_kernel.py``) is one launch, accumulating in fp32 and
rounding once.
"""

from __future__ import annotations

import torch

from ._dispatch import kernels, use_triton


def demod_ref(style: torch.Tensor, weight_sq: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(style.pow(2) @ weight_sq + 1e-8)


def demod(style: torch.Tensor, weight_sq: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``[B, O]`` factors from ``style [B, I]`` and ``weight_sq [I, O]`` (the runtime's own call)."""
    if not use_triton(impl, style, weight_sq):
        return demod_ref(style, weight_sq)
    return kernels("demod").demod(style, weight_sq)
