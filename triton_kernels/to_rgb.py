"""ToRGB in one pass: the modulated 1x1 conv to RGB, its bias and the upsampled RGB skip.

    out[b, c, h, w] = sum_i x[b, i, h, w] * W[c, i] * s[b, i] + bias[c] + up(skip)[b, c, h, w]

``up`` is the reference's ``upfirdn2d(skip, outer(k, k) / 16, up=2, pad=(2, 1))`` with
``k = [1, 3, 3, 1]``: per axis, output ``2n`` is ``(skip[n - 1] + 3 skip[n]) / 4`` and output
``2n + 1`` is ``(3 skip[n] + skip[n + 1]) / 4`` (zero outside the map). torch runs this as a
modulated copy of ``x`` (or a per-sample weight and a batched matmul), a depthwise transposed
conv (a slow cuDNN kernel on 3 channels) and two adds; the kernel (``to_rgb_kernel.py``)
reads ``x`` once, four skip taps per pixel (from cache), accumulates in fp32 and writes
the RGB once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fir import BLUR_KERNEL, upfirdn2d
from ._dispatch import kernels, use_triton


def to_rgb_ref(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               skip: torch.Tensor | None) -> torch.Tensor:
    """``weight``: the scaled ``[3, I]`` 1x1 kernel; ``bias``: 3 values; ``skip``: ``[B, 3, H/2, W/2]`` or None."""
    out = F.conv2d(x * style[:, :, None, None], weight[:, :, None, None]) + bias.reshape(1, -1, 1, 1)
    if skip is not None:
        out = out + upfirdn2d(skip, BLUR_KERNEL, up=2, pad=(2, 1))  # upfirdn2d caches the device copy
    return out


def to_rgb(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           skip: torch.Tensor | None, impl: str = "auto") -> torch.Tensor:
    """``[B, 3, H, W]`` RGB (contiguous) from ``x [B, I, H, W]`` (the runtime's own call; see module docstring)."""
    if not use_triton(impl, x, style, weight, bias, skip):
        return to_rgb_ref(x, style, weight, bias, skip)
    return kernels("to_rgb").to_rgb(x, style, weight, bias, skip)
