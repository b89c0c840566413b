"""Choosing between a Triton kernel and its torch reference."""

from __future__ import annotations

import torch

from ..runtime.errors import SoatError

IMPLS = ("auto", "triton", "ref")


def use_triton(impl: str, *tensors: torch.Tensor) -> bool:
    """True when the Triton kernel should run: ``impl='triton'``, or ``'auto'`` on CUDA tensors.

    ``TRITON_INTERPRET=1`` lets ``impl='triton'`` run on CPU tensors (how CI tests kernels).
    """
    if impl not in IMPLS:
        raise SoatError(f"impl={impl!r} is unknown; use one of {IMPLS}")
    if impl == "ref":
        return False
    if impl == "triton":
        return True
    return all(t.is_cuda for t in tensors)
