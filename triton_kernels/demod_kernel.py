"""Triton kernels of the demodulation factors (``demod.py``): fp32 accumulation, one rounding.

``demod_layers_kernel`` computes every layer of a run in one launch (the fast path); ``demod_kernel`` one
layer (the AOTI packages' graphs, ``packaged_ops.py``).
"""

from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from ._tiles import direct
from .demod import BLOCK_O, DemodTable

# a GEMV per sample: at batch 1 only O / BLOCK_O programs run, so keep BLOCK_O small and cover
# the whole input row (up to 512) in one step
TILE = 4096


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


@triton.jit
def demod_layers_kernel(styles, packed, blocks, out, style_row, style_col, out_row, style_base, out_base, row0,
                        BI: tl.constexpr, BO: tl.constexpr):
    """Program ``(b, r)``: outputs ``o0 .. o0 + BO`` of the layer of table row ``row0 + r``, for sample ``b``.
    ``BI`` covers the widest layer's inputs, so each program reads its outputs' input rows in one step."""
    b = tl.program_id(0)
    row = blocks + (row0 + tl.program_id(1)) * 6
    s_off = tl.load(row) - style_base
    n_in = tl.load(row + 1)
    w_off = tl.load(row + 2)
    n_out = tl.load(row + 3)
    o_off = tl.load(row + 4) - out_base
    o = tl.load(row + 5) + tl.arange(0, BO)
    i = tl.arange(0, BI)
    s = tl.load(styles + b.to(tl.int64) * style_row + (s_off + i) * style_col, mask=i < n_in, other=0.0)
    s = s.to(tl.float32)
    w = tl.load(packed + w_off + o[:, None] * n_in + i[None, :], mask=(o < n_out)[:, None] & (i < n_in)[None, :],
                other=0.0)
    acc = tl.sum(w.to(tl.float32) * (s * s)[None, :], axis=1)
    tl.store(out + b.to(tl.int64) * out_row + o_off + o, (1.0 / tl.sqrt(acc + 1e-8)).to(out.dtype.element_ty),
             mask=o < n_out)


def demod_layers(styles: Sequence[torch.Tensor], table: DemodTable, first: int) -> list[torch.Tensor]:
    """``[B, O_k]`` factors of layers ``first ..`` of ``table`` from their ``styles [B, I_k]`` (``demod.py``)."""
    last = first + len(styles)
    flat = styles[0] if len(styles) == 1 else torch.cat(list(styles), 1)  # one style is read through its strides
    style_base, out_base = table.style_offsets[first], table.out_offsets[first]
    out = torch.empty(flat.shape[0], table.out_offsets[last] - out_base, dtype=flat.dtype, device=flat.device)
    grid = (flat.shape[0], table.block_rows[last] - table.block_rows[first])
    block_i = triton.next_power_of_2(max(table.inputs))
    demod_layers_kernel[grid](flat, table.packed, table.blocks, out, *flat.stride(), out.stride(0), style_base,
                              out_base, table.block_rows[first], BI=block_i, BO=BLOCK_O, enable_fp_fusion=False)
    return list(torch.split(out, table.outputs[first:last], dim=1))
