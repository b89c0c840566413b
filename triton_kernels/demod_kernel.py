"""Triton kernel of the demodulation factors (``demod.py``): one launch, fp32 accumulation, one rounding."""

from typing import Callable

import torch
import triton
import triton.language as tl

from ._tiles import direct

# a GEMV per sample: at batch 1 only O / BLOCK_O programs run, so keep BLOCK_O small and cover
# the whole input row (up to 512) in one step
BLOCK_O, TILE = 8, 4096


@triton.jit
def demod_kernel(style, weight_sq, out, I, O, BI: tl.constexpr, BO: tl.constexpr):
    b = tl.program_id(0)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    acc = tl.zeros([BO], dtype=tl.float32)
    for start in range(0, I, BI):
        i = start + tl.arange(0, BI)
        s = tl.load(style + b * I + i, mask=i < I, other=0.0).to(tl.float32)
        w = tl.load(weight_sq + i[:, None] * O + o[None, :], mask=(i < I)[:, None] & (o < O)[None, :], other=0.0)
        acc += tl.sum((s * s)[:, None] * w.to(tl.float32), axis=0)
    tl.store(out + b * O + o, (1.0 / tl.sqrt(acc + 1e-8)).to(out.dtype.element_ty), mask=o < O)


def demod(style: torch.Tensor, weight_sq: torch.Tensor, wrap: Callable = direct) -> torch.Tensor:
    """``[B, O]`` factors from ``style [B, I]`` and ``weight_sq [I, O]`` (``wrap``: ``_tiles.direct``)."""
    (batch, inputs), outputs = style.shape, weight_sq.shape[1]
    out = torch.empty(batch, outputs, dtype=style.dtype, device=style.device)
    grid = (batch, triton.cdiv(outputs, BLOCK_O))
    block_i = min(triton.next_power_of_2(max(inputs, 1)), TILE // BLOCK_O)
    wrap(demod_kernel)[grid](style.contiguous(), weight_sq.contiguous(), out, inputs, outputs, BI=block_i,
                             BO=BLOCK_O, enable_fp_fusion=False)
    return out
