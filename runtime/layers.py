"""StyleGAN2 layer arithmetic in plain fp32 torch (docs/contract.md#layers), the reference form.

Every function here is the plain form users' reference code computes: grouped
modulated convolutions, transposed conv + FIR blur for upsampling, noise,
bias + leaky ReLU * sqrt(2), ToRGB with an upsampled skip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..triton_kernels.fir import BLUR_KERNEL, upfirdn2d

SQRT2 = math.sqrt(2.0)


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
