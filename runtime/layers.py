"""StyleGAN2 layer arithmetic in plain fp32 torch (SPEC §1), the reference form.

Every function here is the plain form users' reference code computes: grouped
modulated convolutions, transposed conv + FIR blur for upsampling, noise,
bias + leaky ReLU * sqrt(2), ToRGB with an upsampled skip.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

_K1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
# outer([1,3,3,1]) / 64 * 4: the normalised blur kernel times up**2 (sum 4).
BLUR_KERNEL = torch.outer(_K1, _K1) / 64.0 * 4.0


def depthwise_blur_weight(channels: int) -> torch.Tensor:
    """The 4x4 FIR kernel per channel for a depthwise conv: ``[C, 1, 4, 4]`` (symmetric: no flip needed)."""
    return BLUR_KERNEL[None, None].repeat(channels, 1, 1, 1)
SQRT2 = math.sqrt(2.0)


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


def modulated_weight(weight: torch.Tensor, scale: float, style: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """Per-sample weight ``W * scale * s`` (input channels), optionally demodulated.

    Args:
        weight: ``[1, O, I, k, k]``; style: ``[B, I]``.
    Returns:
        ``[B, O, I, k, k]``.
    """
    b, i = style.shape
    w = scale * weight * style.view(b, 1, i, 1, 1)
    if demodulate:
        demod = torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8)
        w = w * demod.view(b, -1, 1, 1, 1)
    return w


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, scale: float, style: torch.Tensor,
                     demodulate: bool = True, upsample: bool = False,
                     blur_kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution as one grouped conv over the batch.

    Args:
        x: ``[B, I, H, W]``; weight ``[1, O, I, k, k]``; style ``[B, I]``.
        upsample: transposed conv (stride 2, no flip) then blur with pad (1, 1).
    Returns:
        ``[B, O, H, W]``, or ``[B, O, 2H, 2W]`` when upsampling.
    """
    b, i, h, w = x.shape
    wgt = modulated_weight(weight, scale, style, demodulate)
    o, k = wgt.shape[1], wgt.shape[-1]
    xg = x.reshape(1, b * i, h, w)
    if upsample:
        wt = wgt.transpose(1, 2).reshape(b * i, o, k, k)
        out = F.conv_transpose2d(xg, wt, padding=0, stride=2, groups=b)
        out = out.view(b, o, out.shape[-2], out.shape[-1])
        return upfirdn2d(out, BLUR_KERNEL if blur_kernel is None else blur_kernel, up=1, pad=(1, 1))
    out = F.conv2d(xg, wgt.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    return out.view(b, o, h, w)


def styled_conv(x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor, scale: float,
                noise_weight: torch.Tensor, bias: torch.Tensor, upsample: bool) -> torch.Tensor:
    """Modulated conv -> ``+ noise_weight * noise`` -> ``leaky_relu(. + bias, 0.2) * sqrt(2)``.

    Args:
        noise: ``[1 or B, 1, H', W']`` at the output size.
    """
    out = modulated_conv2d(x, weight, scale, style, demodulate=True, upsample=upsample)
    out = out + noise_weight * noise
    return F.leaky_relu(out + bias.view(1, -1, 1, 1), 0.2) * SQRT2


def to_rgb(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, scale: float, bias: torch.Tensor,
           skip: torch.Tensor | None) -> torch.Tensor:
    """1x1 modulated conv to RGB (no demodulation) + bias, + the skip upsampled x2 by upfirdn2d."""
    out = modulated_conv2d(x, weight, scale, style, demodulate=False) + bias
    if skip is not None:
        out = out + upfirdn2d(skip, BLUR_KERNEL, up=2, pad=(2, 1))
    return out


def pixel_norm(z: torch.Tensor) -> torch.Tensor:
    return z * torch.rsqrt(torch.mean(z ** 2, dim=1, keepdim=True) + 1e-8)


def equal_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, lr_mul: float,
                 activate: bool) -> torch.Tensor:
    """Equalized linear: ``x @ (W * lr_mul / sqrt(in)).T + b * lr_mul`` (leaky ReLU * sqrt(2) if activate)."""
    scale = lr_mul / math.sqrt(weight.shape[1])
    if activate:
        out = F.linear(x, weight * scale)
        return F.leaky_relu(out + bias * lr_mul, 0.2) * SQRT2
    return F.linear(x, weight * scale, bias=bias * lr_mul)


def mapping_network(z: torch.Tensor, linears) -> torch.Tensor:
    """``w = MLP(PixelNorm(z))`` with the mapping's equalized linears: ``[B, 512] -> [B, 512]``."""
    x = pixel_norm(z)
    for lin in linears:
        x = equal_linear(x, lin.weight, lin.bias, lin.lr_mul, activate=True)
    return x


def affine_styles(wplus: torch.Tensor, w_indices, modulations) -> torch.Tensor:
    """Each affine on its W+ entry, concatenated: ``[B, n_latent, 512] -> [B, total]``."""
    return torch.cat([equal_linear(wplus[:, i], a.weight, a.bias, 1.0, activate=False)
                      for i, a in zip(w_indices, modulations)], dim=1)
