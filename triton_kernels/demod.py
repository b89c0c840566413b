"""Demodulation factors of a styled conv: ``d[b, o] = rsqrt(sum_i s[b, i]^2 * wsq[i, o] + 1e-8)``.

``wsq[i, o]`` is the sum over the kernel taps of the squared (scaled) weight. torch runs
this as four launches (square, matmul, add, rsqrt) per layer. The fast path computes the
factors of every styled conv of a run of layers in one launch (``demod_layers``): the
layers' ``wsq`` are packed into one buffer (``DemodTable``), their styles are concatenated
into one row per sample, and the kernel (``demod_kernel.py``) writes one ``[B, sum O]``
buffer whose column slices the epilogues read, accumulating in fp32 and rounding once.
The single-layer kernel there serves the graphs of the AOTI packages (``packaged_ops.py``),
which hold one layer each.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import torch

from ._dispatch import kernels, use_triton
from ._tiles import cdiv, device_table

BLOCK_O = 8  # outputs per program of the layered kernel: at batch 1, sum(O) / 8 programs (672 at 256 px)


def demod_ref(style: torch.Tensor, weight_sq: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(style.pow(2) @ weight_sq + 1e-8)


class DemodTable:
    """The ``weight_sq [I_k, O_k]`` of a chain's styled convs (layer ``k`` in chain order), packed for ``demod_layers``.

    Layer ``k``'s block is stored transposed, ``[O_k, I_k]`` (each output's inputs contiguous: the kernel reads
    whole rows), at ``weight_offsets[k]`` of ``packed``. ``blocks`` is the launch table on the device, one row per
    ``BLOCK_O`` outputs of a layer: ``(style offset, inputs, weight offset, outputs, output offset, first output)``,
    offsets counted over all layers (a run of layers ``first..last`` is the contiguous row range
    ``block_rows[first]:block_rows[last]``, its offsets shifted by the run's first layer's). Made once per backend:
    a CUDA-graph capture never copies it.
    """

    def __init__(self, weight_sq: Sequence[torch.Tensor]):
        self.inputs = tuple(int(w.shape[0]) for w in weight_sq)
        self.outputs = tuple(int(w.shape[1]) for w in weight_sq)
        sizes = [i * o for i, o in zip(self.inputs, self.outputs)]
        self.packed = torch.cat([w.t().reshape(-1) for w in weight_sq])
        self.weight_offsets = (0, *accumulate(sizes))
        self.style_offsets = (0, *accumulate(self.inputs))
        self.out_offsets = (0, *accumulate(self.outputs))
        self.block_rows = (0, *accumulate(cdiv(o, BLOCK_O) for o in self.outputs))
        rows = [(self.style_offsets[k], self.inputs[k], self.weight_offsets[k], self.outputs[k], self.out_offsets[k], o)
                for k in range(len(sizes)) for o in range(0, self.outputs[k], BLOCK_O)]
        self.blocks = device_table(rows, self.packed.device)

    def weight_sq(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s ``[I, O]`` (a transposed view of its packed block)."""
        start, inputs, outputs = self.weight_offsets[layer], self.inputs[layer], self.outputs[layer]
        return self.packed[start:start + inputs * outputs].view(outputs, inputs).t()


def demod_layers(styles: Sequence[torch.Tensor], table: DemodTable, first: int,
                 impl: str = "auto") -> list[torch.Tensor]:
    """The ``[B, O_k]`` factors of layers ``first, first + 1, ...`` of ``table`` from their ``styles [B, I_k]``.

    The runtime's own call (one style per layer of a run, shapes from the chain). The kernel makes two
    launches whatever the number of layers (the styles' concatenation and the factors); the results are
    column slices of one buffer (row stride ``sum O``). The reference (on CPU, and whenever a style
    requires grad) is ``demod_ref`` per layer.
    """
    if not use_triton(impl, table.packed, *styles):
        return [demod_ref(s, table.weight_sq(first + k)) for k, s in enumerate(styles)]
    return kernels("demod").demod_layers(styles, table, first)
