"""Styled-conv epilogue: everything after the shared-weight conv of one layer, in one pass.

For the conv output ``y`` (``[B, C, H, W]``, or ``[B, C, H + 1, W + 1]`` for an upsampling
layer, whose stride-2 transposed conv makes ``2h + 1`` rows of ``h`` input rows, ``H = 2h``),
the output ``[B, C, H, W]`` is:

    v = blur(y) if up else y          # the [1, 3, 3, 1] x [1, 3, 3, 1] / 16 FIR, pad 1
    v = v * demod[b, c] + noise_weight * noise[b or 0, 0, h, w] + bias[c]
    out = leaky_relu(v, 0.2) * sqrt(2)

The reference runs this as five to seven torch ops (the blur a depthwise conv, which
cuDNN runs as a slow grouped direct conv): each a read and a write of the whole map.
The kernel (``conv_epilogue_kernel.py``) reads ``y`` once (the blur's 16 taps come from
cache) and writes ``out`` once, computing in fp32 and rounding once. Demodulation is
applied after the blur there and before it in the reference: both are linear per
channel, so the two agree to rounding (fp32 rel err ~1e-7).

``conv_epilogue_modulated`` also writes the next conv's modulated input, so inside a
run of layers the separate modulation pass (a read and a write) and its rounding go away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fir import cached_blur_weight
from ._dispatch import kernels, use_triton
from .modulate import modulate_ref


def conv_epilogue_ref(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                      bias: torch.Tensor, up: bool) -> torch.Tensor:
    """The torch ops the kernel replaces (as ``runtime/graph_modules.py`` writes them)."""
    out = y * demod[:, :, None, None]
    if up:
        blur = cached_blur_weight(y.shape[1], y.device, y.dtype)
        out = F.conv2d(out, blur, padding=1, groups=y.shape[1])
    out = out + noise_weight * noise
    return F.leaky_relu(out + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2.0)


def conv_epilogue(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                  bias: torch.Tensor, up: bool, impl: str = "auto") -> torch.Tensor:
    """The fused epilogue (module docstring); Triton on CUDA, the reference elsewhere.

    The runtime's own call (shapes come from the chain, so no user-facing checks here).

    Args:
        y: conv output ``[B, C, Hy, Wy]``; ``Hy = H + 1`` when ``up`` (``H`` the output height,
            twice the conv input's), else ``H``.
        demod: ``[B, C]`` demodulation factors (any strides: the fast path passes column slices of one buffer).
        noise: ``[1 or B, 1, H, W]``.
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
    if not write_x and next_style is None:
        raise ValueError("conv_epilogue_modulated needs write_x or next_style: it would write nothing")
    if not use_triton(impl, y, demod, noise, noise_weight, bias, next_style):
        x = conv_epilogue_ref(y, demod, noise, noise_weight, bias, up)
        return (x if write_x else None), (None if next_style is None else modulate_ref(x, next_style))
    return kernels("conv_epilogue").conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, next_style,
                                                            write_x)
