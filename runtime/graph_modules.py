"""Graph modules: one small ``nn.Module`` per graph of ``graphs.py``, in the shared-weight form.

The exporter traces these into ONNX; the fast torch backend runs its fused kernels on
their prepared weights (``ModConv.weight``, ``weight_sq``, noise weight, bias).

The reference modulated conv (``runtime/layers.py``) is one grouped conv with
``groups = B``. ONNX's ``Conv.group`` is a static attribute, so that form would
freeze the batch. Here the same arithmetic is written with the batch outside the
weights (NVlabs' ``fused_modconv=False``):

    conv(x, W * scale * s) * d  ==  conv(x * s, W * scale) * d,
    d[b, o] = rsqrt(sum_i s[b, i]^2 * sum_kk (W[o, i] * scale)^2 + 1e-8),

and the transposed conv of the upsampling layer likewise; the FIR blurs become
depthwise convs (``Conv``/``ConvTranspose`` with ``group = C``, static). The
result equals the torch backend to fp32 rounding (tests check rel err <= 1e-5).
Mapping and affine graphs call ``runtime/layers.py`` as they are.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..triton_kernels.demod import demod_ref
from ..triton_kernels.fir import depthwise_blur_weight
from . import layers
from .chain import CONST, CONV_UP, TO_RGB, build_chain
from .graphs import MAPPING, STYLES, graph_io, linked_node_id
from .weights import StyleGAN2Weights


class ConstNode(nn.Module):
    """``style [B, C]`` (its batch only) -> ``x [B, C, 4, 4]``."""

    def __init__(self, const: torch.Tensor):
        super().__init__()
        self.register_buffer("const", const.detach().clone())  # [1, C, 4, 4]
        self.shape = tuple(const.shape[1:])

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.const.expand(style.shape[0], *self.shape)


class ModConv(nn.Module):
    """Modulated (and demodulated) conv with the shared weight: ``x [B, I, H, W], s [B, I] -> [B, O, H', W']``.

    ``upsample``: transposed conv (stride 2) then the blur with pad (1, 1), ``H' = 2H``.
    """

    def __init__(self, weight: torch.Tensor, scale: float, demodulate: bool, upsample: bool):
        super().__init__()
        w = weight[0].detach() * scale  # [O, I, k, k]
        self.upsample = upsample
        self.demodulate = demodulate
        self.padding = 0 if upsample else w.shape[-1] // 2
        self.out_channels = w.shape[0]
        # conv_transpose2d takes [I, O, k, k]; no flip (PyTorch semantics, docs/contract.md#layers)
        self.register_buffer("weight", w.transpose(0, 1).contiguous() if upsample else w.contiguous())
        if demodulate:
            self.register_buffer("weight_sq", w.pow(2).sum([2, 3]).t().contiguous())  # [I, O]
        if upsample:
            self.register_buffer("blur", depthwise_blur_weight(w.shape[0]))

    def shared_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The conv of an already modulated input with the shared weight (``2H + 1`` wide when upsampling)."""
        if self.upsample:
            return F.conv_transpose2d(x, self.weight, stride=2)
        return F.conv2d(x, self.weight, padding=self.padding)

    def demod(self, style: torch.Tensor) -> torch.Tensor:
        """``[B, O]`` demodulation factors."""
        return demod_ref(style, self.weight_sq)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.from_modulated(x * style[:, :, None, None], style)

    def from_modulated(self, x_mod: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The conv of the input ``x_mod = x * style`` already modulated."""
        out = self.shared_conv(x_mod)
        if self.demodulate:
            out = out * self.demod(style)[:, :, None, None]
        if self.upsample:
            out = F.conv2d(out, self.blur, padding=1, groups=self.out_channels)
        return out


class StyledConvNode(nn.Module):
    """``x [B, I, H, W], style [B, I], noise [1 or B, 1, H', W'] -> x [B, O, H', W']``."""

    def __init__(self, module: nn.Module, upsample: bool):
        super().__init__()
        self.conv = ModConv(module.conv.weight, module.conv.scale, demodulate=True, upsample=upsample)
        self.register_buffer("noise_weight", module.noise.weight.detach().clone())  # [1]
        self.register_buffer("bias", module.activate.bias.detach().view(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x, style), noise)

    def activate(self, out: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise, bias and the scaled leaky ReLU on the (demodulated) conv output."""
        out = out + self.noise_weight * noise
        return F.leaky_relu(out + self.bias, 0.2) * layers.SQRT2


class LinkedConvNode(nn.Module):
    """A styled conv's linked graph (``graphs.py``): ``x_mod, style, noise[, next_style] -> [x][, next_x_mod]``.

    ``outputs`` are the graph's (``graph_io``); ``next_x_mod`` is ``x * next_style``, the next conv's
    modulated input, exactly as that conv's own graph would modulate ``x``.
    """

    def __init__(self, node: StyledConvNode, outputs: tuple[str, ...]):
        super().__init__()
        self.node = node
        self.outputs = outputs

    def forward(self, x_mod: torch.Tensor, style: torch.Tensor, noise: torch.Tensor,
                next_style: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = self.node.activate(self.node.conv.from_modulated(x_mod, style), noise)
        out = {"x": x}
        if next_style is not None:
            out["next_x_mod"] = x * next_style[:, :, None, None]
        return out[self.outputs[0]] if len(self.outputs) == 1 else tuple(out[n] for n in self.outputs)


class ToRGBNode(nn.Module):
    """``x [B, I, H, W], style [B, I] -> rgb [B, 3, H, W]`` (to_rgb1)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.conv = ModConv(module.conv.weight, module.conv.scale, demodulate=False, upsample=False)
        self.register_buffer("bias", module.bias.detach().clone())  # [1, 3, 1, 1]

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv(x, style) + self.bias


class ToRGBSkipNode(ToRGBNode):
    """``x [B, I, H, W], skip [B, 3, H/2, W/2], style [B, I] -> rgb [B, 3, H, W]``.

    The skip's ``upfirdn2d(up=2, pad=(2, 1))`` is a depthwise transposed conv
    (stride 2, crop 1 per side) with the same symmetric kernel.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.register_buffer("blur", depthwise_blur_weight(3))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        up = F.conv_transpose2d(skip, self.blur, stride=2, padding=1, groups=3)
        return super().forward(x, style) + up


class MappingGraph(nn.Module):
    """``z [B, 512] -> w [B, 512]``: PixelNorm then the MLP (``layers.equal_linear``)."""

    def __init__(self, weights: StyleGAN2Weights):
        super().__init__()
        self.mlp = copy.deepcopy(nn.ModuleList(list(weights.style)[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return layers.mapping_network(z, self.mlp)


class StylesGraph(nn.Module):
    """``wplus [B, n_latent, 512] -> styles [B, total]``: every affine on its W+ entry, concatenated."""

    def __init__(self, weights: StyleGAN2Weights):
        super().__init__()
        nodes = build_chain(weights.config)[1:]
        self.w_index = [n.w_index for n in nodes]
        self.affines = copy.deepcopy(nn.ModuleList(weights.node_module(n.id).conv.modulation for n in nodes))

    def forward(self, wplus: torch.Tensor) -> torch.Tensor:
        return layers.affine_styles(wplus, self.w_index, self.affines)


def graph_module(weights: StyleGAN2Weights, graph_id: str) -> nn.Module:
    """The module of one exported graph (its own copy of the tensors), inputs in the graph's order."""
    if graph_id == MAPPING:
        return MappingGraph(weights)
    if graph_id == STYLES:
        return StylesGraph(weights)
    if (node_id := linked_node_id(graph_id)) is not None:
        return LinkedConvNode(graph_module(weights, node_id), graph_io(weights.config, graph_id)[1])
    node = next(n for n in build_chain(weights.config) if n.id == graph_id)
    m = weights.node_module(node.id)
    if node.kind == CONST:
        return ConstNode(m.input)
    if node.kind == TO_RGB:
        return ToRGBSkipNode(m) if "skip" in node.inputs else ToRGBNode(m)
    return StyledConvNode(m, upsample=node.kind == CONV_UP)
