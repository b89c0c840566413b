"""Styled-conv epilogue: everything after the shared-weight conv of one layer, in one pass.

For the conv output ``y`` (``[B, C, H, W]``, or ``[B, C, 2H + 1, 2W + 1]`` after the
stride-2 transposed conv of an upsampling layer):

    v = blur(y) if up else y          # the [1, 3, 3, 1] x [1, 3, 3, 1] / 16 FIR, pad 1
    v = v * demod[b, c] + noise_weight * noise[b or 0, 0, h, w] + bias[c]
    out = leaky_relu(v, 0.2) * sqrt(2)

The reference runs this as five to seven torch ops (the blur a depthwise conv, which
cuDNN runs as a slow grouped direct conv): each a read and a write of the whole map.
The kernel reads ``y`` once (the blur's 16 taps come from cache) and writes ``out``
once, computing in fp32 and rounding once. Demodulation is applied after the blur
here and before it in the reference: both are linear per channel, so the two agree
to rounding (fp32 rel err ~1e-7).

``conv_epilogue_modulated`` also writes the next conv's modulated input, so inside a
run of layers the separate modulation pass (a read and a write) and its rounding go away.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..runtime.layers import BLUR_KERNEL, SQRT2
from ._dispatch import use_triton
from .modulate import modulate_ref
from ._tiles import empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built


def conv_epilogue_ref(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                      bias: torch.Tensor, up: bool) -> torch.Tensor:
    """The torch ops the kernel replaces (as ``runtime/graph_modules.py`` writes them)."""
    out = y * demod[:, :, None, None]
    if up:
        blur = BLUR_KERNEL.to(y.device, y.dtype)[None, None].repeat(y.shape[1], 1, 1, 1)
        out = F.conv2d(out, blur, padding=1, groups=y.shape[1])
    out = out + noise_weight * noise
    return F.leaky_relu(out + bias.view(1, -1, 1, 1), 0.2) * SQRT2


def _conv_epilogue_kernel(y, demod, noise, noise_weight, bias, next_style, out, out_mod,
                          syb, syc, syh, syw, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, Hy, Wy,
                          B, C, H, W, UP: tl.constexpr, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr,
                          CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    if UP:
        plane = y + offset(b, c, 0, 0, syb, syc, syh, syw)
        v = tl.zeros([BR, BI], dtype=tl.float32)
        for i in tl.static_range(4):
            r = h + (i - 1)
            row_ok = ok & (r >= 0) & (r < Hy)
            row = tl.zeros([BR, BI], dtype=tl.float32)
            for j in tl.static_range(4):
                q = w + (j - 1)
                tap = tl.load(plane + r * syh + q * syw, mask=row_ok & (q >= 0) & (q < Wy), other=0.0)
                row += tap.to(tl.float32) * (1 + j * (3 - j))  # taps 1, 3, 3, 1
            v += row * (1 + i * (3 - i))
        v = v * (1.0 / 64.0) * 4.0  # the reference kernel: outer([1, 3, 3, 1]) / 64 * up_factor^2
    else:
        v = tl.load(y + offset(b, c, h, w, syb, syc, syh, syw), mask=ok).to(tl.float32)
    d = tl.load(demod + b * C + c, mask=ok).to(tl.float32)
    n = tl.load(noise + b.to(tl.int64) * snb + h * snh + w * snw, mask=ok).to(tl.float32)
    nw = tl.load(noise_weight).to(tl.float32)
    bi = tl.load(bias + c, mask=c < C).to(tl.float32)
    v = v * d + nw * n + bi
    v = tl.where(v >= 0, v, v * 0.2) * 1.4142135623730951
    if WRITE_X:
        tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), v.to(out.dtype.element_ty), mask=ok)
    if WRITE_MOD:  # from the fp32 value: one rounding, where modulating the stored x would take two
        s = tl.load(next_style + b * C + c, mask=ok).to(tl.float32)
        tl.store(out_mod + offset(b, c, h, w, smb, smc, smh, smw), (v * s).to(out_mod.dtype.element_ty), mask=ok)


@functools.cache
def _kernel():
    return jit(_conv_epilogue_kernel)


def conv_epilogue(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                  bias: torch.Tensor, up: bool, impl: str = "auto") -> torch.Tensor:
    """The fused epilogue (module docstring); Triton on CUDA, the reference elsewhere.

    The runtime's own call (shapes come from the chain, so no user-facing checks here).

    Args:
        y: conv output ``[B, C, Hy, Wy]``; ``Hy = 2H + 1`` when ``up``, else ``H``.
        demod: ``[B, C]`` demodulation factors. noise: ``[1 or B, 1, H, W]``.
        noise_weight: ``[1]`` (a tensor, read on the device: no host sync).
        bias: ``[C]`` (any shape with ``C`` elements).
    Returns:
        ``[B, C, H, W]`` in ``y``'s layout and dtype.
    """
    x, _ = conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, None, True, impl)
    return x


def conv_epilogue_modulated(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                            bias: torch.Tensor, up: bool, next_style: torch.Tensor | None, write_x: bool,
                            impl: str = "auto") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The epilogue that also writes the next conv's modulated input ``x * next_style[b, c]``.

    Returns ``(x or None, x_mod or None)``: ``x`` when ``write_x`` (a ToRGB or the caller
    reads the features), ``x_mod`` when ``next_style`` is given, rounded once from the
    fp32 value (one rounding fewer than modulating the stored ``x``).
    """
    if not use_triton(impl, y, demod, noise, noise_weight, bias):
        x = conv_epilogue_ref(y, demod, noise, noise_weight, bias, up)
        return (x if write_x else None), (None if next_style is None else modulate_ref(x, next_style))
    B, C, Hy, Wy = y.shape
    H, W = (Hy - 1, Wy - 1) if up else (Hy, Wy)
    out = empty_map((B, C, H, W), y) if write_x else None
    out_mod = empty_map((B, C, H, W), y) if next_style is not None else None
    first = out if out is not None else out_mod
    noise_strides = (noise.stride(0) if noise.shape[0] > 1 else 0, noise.stride(2), noise.stride(3))
    args = (y, demod.contiguous(), noise, noise_weight, bias.reshape(-1),
            first if next_style is None else next_style.contiguous(), first, first if out_mod is None else out_mod,
            *y.stride(), *noise_strides, *first.stride(), *(first if out_mod is None else out_mod).stride(), Hy, Wy)
    launch(_kernel(), first.shape, is_channels_last(first), args, UP=up, WRITE_X=write_x,
           WRITE_MOD=next_style is not None)
    return out, out_mod
