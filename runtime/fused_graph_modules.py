"""The graph modules in their fused form: styled convs and ToRGBs through the fast path's Triton kernels.

What ``soat export --format aoti --device cuda`` compiles: the same arithmetic as
``graph_modules.py`` (the same weights; equal to rounding, fp32 rel err <= 1e-5), with the
modulation, the demodulation, the conv epilogue (the upsampling blur inside) and ToRGB as the ops
of ``triton_kernels/packaged_ops.py``, so Inductor puts the fast path's kernels into the packages
instead of its own pointwise code and a depthwise conv for the blur. The convs stay ATen's (cuDNN).
A fused module reads its ``x`` in channels_last (``channels_last_inputs``: the export records it in
the manifest and the loaders pass ``x`` so), and its conv weights are channels_last: cuDNN's fast
layout for fp16 convs, as on the fast path.

Importing this module imports Triton (the ops' kernels); the runtime imports it only to export.
"""

from __future__ import annotations

import torch
from torch import nn

from ..triton_kernels import packaged_ops  # noqa: F401  (registers torch.ops.soat.*, also where a worker unpickles)
from .graph_modules import StyledConvNode, ToRGBNode, ToRGBSkipNode, graph_module
from .weights import StyleGAN2Weights


class FusedStyledConvNode(nn.Module):
    """``StyledConvNode`` as modulation, the shared-weight conv, demodulation and the fused epilogue."""

    channels_last_inputs = ("x",)

    def __init__(self, node: StyledConvNode):
        super().__init__()
        # channels_last weights, as the fast path's: with a channels_last input alone, torch 2.11's export traces
        # the CUDA conv's output as contiguous (its layout test on symbolic strides falls back to NCHW), and the
        # epilogue would then walk it in that order
        self.node = node.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ops, conv = torch.ops.soat, self.node.conv
        y = conv.shared_conv(ops.modulate(x, style))
        return ops.conv_epilogue(y, ops.demod(style, conv.weight_sq), noise, self.node.noise_weight, self.node.bias,
                                 conv.upsample)


class FusedToRGBNode(nn.Module):
    """``ToRGBNode`` as one kernel (``x, style -> rgb``)."""

    channels_last_inputs = ("x",)

    def __init__(self, node: ToRGBNode):
        super().__init__()
        self.register_buffer("weight", node.conv.weight[:, :, 0, 0].contiguous())  # [3, I], scaled
        self.register_buffer("bias", node.bias.reshape(-1).clone())

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return torch.ops.soat.to_rgb(x, style, self.weight, self.bias, None)


class FusedToRGBSkipNode(FusedToRGBNode):
    """``ToRGBSkipNode`` as one kernel (``x, skip, style -> rgb``: the skip upsampled inside)."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return torch.ops.soat.to_rgb(x, style, self.weight, self.bias, skip)


def fused_graph_module(weights: StyleGAN2Weights, graph_id: str) -> nn.Module:
    """``graph_module(weights, graph_id)`` in the fused form where it has one (mapping, styles and the constant
    are as they are)."""
    module = graph_module(weights, graph_id)
    if isinstance(module, StyledConvNode):
        return FusedStyledConvNode(module)
    if isinstance(module, ToRGBSkipNode):
        return FusedToRGBSkipNode(module)
    if isinstance(module, ToRGBNode):
        return FusedToRGBNode(module)
    return module
