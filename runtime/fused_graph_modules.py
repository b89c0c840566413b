"""The graph modules in their fused form: styled convs and ToRGBs through the fast path's Triton kernels.

What ``soat export --format aoti --device cuda`` compiles: the same arithmetic as
``graph_modules.py`` (the same weights; equal to rounding, fp32 rel err <= 1e-5), with the
modulation, the demodulation, the conv epilogue (the upsampling blur inside) and ToRGB as the ops
of ``triton_kernels/packaged_ops.py``, so Inductor puts the fast path's kernels into the packages
instead of its own pointwise code and a depthwise conv for the blur. The convs stay ATen's (cuDNN).
A fused module reads its feature map (``x``, a linked graph's ``x_mod``) in channels_last
(``channels_last_inputs``: the export records it in the manifest and the loaders pass it so), and its
conv weights are channels_last: cuDNN's fast
layout for fp16 convs, as on the fast path.

Importing this module imports Triton (the ops' kernels); the runtime imports it only to export.
"""

from __future__ import annotations

import torch
from torch import nn

from ..triton_kernels import packaged_ops  # noqa: F401  (registers torch.ops.soat.*, also where a worker unpickles)
from .graph_modules import LinkedConvNode, StyledConvNode, ToRGBNode, ToRGBSkipNode, graph_module
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


class FusedLinkedConvNode(nn.Module):
    """``LinkedConvNode`` as the shared-weight conv of ``x_mod``, demodulation and the epilogue form that writes
    the graph's outputs (``packaged_ops``)."""

    channels_last_inputs = ("x_mod",)

    def __init__(self, linked: LinkedConvNode):
        super().__init__()
        self.node = linked.node.to(memory_format=torch.channels_last)  # as FusedStyledConvNode's
        self.outputs = linked.outputs

    def forward(self, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
                next_style: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ops, conv = torch.ops.soat, self.node.conv
        args = (conv.shared_conv(_channels_last_view(x_mod)), ops.demod(style, conv.weight_sq), noise,
                self.node.noise_weight, self.node.bias, conv.upsample)
        if next_style is None:
            return ops.conv_epilogue(*args)
        if self.outputs == ("next_x_mod",):
            return ops.conv_epilogue_next(*args, next_style)
        return ops.conv_epilogue_both(*args, next_style)


def _channels_last_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` (channels_last dense, as the loaders pass it) viewed with channels_last strides written out from its
    sizes. On torch 2.11 a conv reading a graph input directly is traced as giving NCHW, and Inductor then copies
    the conv's (channels_last) output into that layout for the epilogue, which runs 2x slower on it; through this
    view (free at run time) the conv's output stays channels_last, as behind the modulation op of the node graphs
    (bench/NOTES.md, round 7)."""
    B, C, H, W = x.shape
    return x.as_strided((B, C, H, W), (C * H * W, 1, W * C, C))


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
    if isinstance(module, LinkedConvNode):
        return FusedLinkedConvNode(module)
    if isinstance(module, StyledConvNode):
        return FusedStyledConvNode(module)
    if isinstance(module, ToRGBSkipNode):
        return FusedToRGBSkipNode(module)
    if isinstance(module, ToRGBNode):
        return FusedToRGBNode(module)
    return module
