"""Demodulation factors of a styled conv: ``d[b, o] = rsqrt(sum_i s[b, i]^2 * wsq[i, o] + 1e-8)``.

``wsq[i, o]`` is the sum over the kernel taps of the squared (scaled) weight. torch runs
this as four launches (square, matmul, add, rsqrt), which at batch 1 cost more than
the arithmetic; the kernel is one launch, accumulating in fp32 and rounding once.
"""

from __future__ import annotations

import functools

import torch

from ._dispatch import use_triton
from ._tiles import jit, run

tl = None  # bound by _tiles.jit when the kernel is first built

# a GEMV per sample: at batch 1 only O / BLOCK_O programs run, so keep BLOCK_O small and cover
# the whole input row (up to 512) in one step
BLOCK_O, TILE = 8, 4096


def demod_ref(style: torch.Tensor, weight_sq: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(style.pow(2) @ weight_sq + 1e-8)


def _demod_kernel(style, weight_sq, out, I, O, BI: tl.constexpr, BO: tl.constexpr):
    b = tl.program_id(0)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    acc = tl.zeros([BO], dtype=tl.float32)
    for start in range(0, I, BI):
        i = start + tl.arange(0, BI)
        s = tl.load(style + b * I + i, mask=i < I, other=0.0).to(tl.float32)
        w = tl.load(weight_sq + i[:, None] * O + o[None, :], mask=(i < I)[:, None] & (o < O)[None, :], other=0.0)
        acc += tl.sum((s * s)[:, None] * w.to(tl.float32), axis=0)
    tl.store(out + b * O + o, (1.0 / tl.sqrt(acc + 1e-8)).to(out.dtype.element_ty), mask=o < O)


@functools.cache
def _kernel():
    return jit(_demod_kernel)


def demod(style: torch.Tensor, weight_sq: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``[B, O]`` factors from ``style [B, I]`` and ``weight_sq [I, O]`` (the runtime's own call)."""
    if not use_triton(impl, style, weight_sq):
        return demod_ref(style, weight_sq)
    (batch, inputs), outputs = style.shape, weight_sq.shape[1]
    out = torch.empty(batch, outputs, dtype=style.dtype, device=style.device)
    grid = (batch, (outputs + BLOCK_O - 1) // BLOCK_O)
    block_i = min(1 << max(inputs - 1, 0).bit_length(), TILE // BLOCK_O)
    run(_kernel(), grid, (style.contiguous(), weight_sq.contiguous(), out, inputs, outputs), BI=block_i, BO=BLOCK_O)
    return out

