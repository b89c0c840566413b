"""StyleGAN2's FIR resampling filter: the kernel and the reference ``upfirdn2d`` (plain torch).

The layer references (``soat.runtime.layers``) and the references of the fused kernels
(``conv_epilogue``, ``to_rgb``) filter with these; the kernels compute the same taps inline.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

FILTER_TAPS = (1.0, 3.0, 3.0, 1.0)
# outer([1,3,3,1]) / 64: the normalised 4x4 filter (sum 1), as NVIDIA's checkpoints store it
NORMALISED_FILTER = torch.outer(torch.tensor(FILTER_TAPS), torch.tensor(FILTER_TAPS)) / 64.0
# times up**2 = 4: the kernel rosinality's port stores and uses (sum 4)
BLUR_KERNEL = NORMALISED_FILTER * 4.0


def depthwise_blur_weight(channels: int, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 4x4 FIR kernel per channel for a depthwise conv: ``[C, 1, 4, 4]`` (symmetric: no flip needed)."""
    return BLUR_KERNEL[None, None].repeat(channels, 1, 1, 1).to(device, dtype)


@lru_cache(maxsize=None)
def cached_blur_weight(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``depthwise_blur_weight`` made once per device and dtype (no host copy per call, so a CUDA-graph
    capture may use it; callers must not modify it)."""
    return depthwise_blur_weight(channels, device, dtype)


@lru_cache(maxsize=None)
def _fir(kernel_key: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The flipped FIR kernel ``[1, 1, kh, kw]`` on a device, made once (no host copies per call)."""
    k = torch.tensor(kernel_key, dtype=torch.float32)
    return torch.flip(k, [0, 1]).to(device=device, dtype=dtype)[None, None]


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int, pad: tuple[int, int]) -> torch.Tensor:
    """Upsample by zero insertion, pad, and filter with a 4x4 FIR kernel.

    Args:
        x: ``[B, C, H, W]``.
        kernel: ``[kh, kw]`` (symmetric, so correlation = convolution).
        up: 1 or 2; each sample is followed by ``up - 1`` zeros.
        pad: ``(p0, p1)`` zeros before/after, on both axes.
    Returns:
        ``[B, C, up*H + p0 + p1 - kh + 1, up*W + p0 + p1 - kw + 1]``.
    """
    b, c, h, w = x.shape
    out = x.reshape(b * c, 1, h, 1, w, 1)
    if up > 1:
        out = F.pad(out, (0, up - 1, 0, 0, 0, up - 1))
    out = out.reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, (pad[0], pad[1], pad[0], pad[1]))
    k = _fir(tuple(map(tuple, kernel.tolist())), out.device, out.dtype)
    out = F.conv2d(out, k)
    return out.reshape(b, c, out.shape[-2], out.shape[-1])
