"""Parameter containers named exactly as rosinality's checkpoint keys.

These modules hold tensors only; the arithmetic lives in ``layers.py`` so that
the torch backend, the exporter and the fast path share one definition.
``StyleGAN2Weights().state_dict()`` has the key set of ``ckpt["g_ema"]``
(blur kernels aside: they are constants, see ``layers.BLUR_KERNEL``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .chain import CONV_UP, TO_RGB, build_chain
from .config import GeneratorConfig


class EqualLinear(nn.Module):
    """``weight [out, in]``, ``bias [out]``; used as ``x @ (W * scale).T + b * lr_mul``."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_dim)


class ModulatedConv2d(nn.Module):
    """``weight [1, out, in, k, k]`` and the affine ``modulation`` (w -> sigma)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.empty(1, channels, 4, 4))


class Mapping(nn.Sequential):
    """``style.{1..n_mlp}``: index 0 is PixelNorm in rosinality's Sequential."""

    def __init__(self, config: GeneratorConfig):
        layers = [nn.Identity()] + [EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp)
                                    for _ in range(config.n_mlp)]
        super().__init__(*layers)


class StyleGAN2Weights(nn.Module):
    """All generator tensors, keyed as rosinality's ``g_ema`` state dict."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        sd = config.style_dim
        chain = build_chain(config)
        self.style = Mapping(config)
        self.input = ConstantInput(config.channels(4))
        self.conv1 = StyledConv(chain[1].in_channels, chain[1].out_channels, sd)
        self.to_rgb1 = ToRGB(chain[2].in_channels, sd)
        self.convs = nn.ModuleList(StyledConv(n.in_channels, n.out_channels, sd)
                                   for n in chain[3:] if n.kind != TO_RGB)
        self.to_rgbs = nn.ModuleList(ToRGB(n.in_channels, sd) for n in chain[3:] if n.kind == TO_RGB)
        self.noises = nn.Module()
        for node in chain:
            if node.noise_index is not None:
                r = node.resolution
                self.noises.register_buffer(f"noise_{node.noise_index}", torch.empty(1, 1, r, r))
        assert sum(n.kind == CONV_UP for n in chain) == config.num_blocks
        # the checkpoint's mean latent [style_dim] (NVIDIA's mapping.w_avg, rosinality's latent_avg), if it
        # carries one: truncation centres on affine(w_avg). A plain attribute, not in the state dict.
        self.w_avg: torch.Tensor | None = None

    def node_module(self, node_id: str) -> nn.Module:
        """The module holding a chain node's tensors (``convs.3`` -> ``self.convs[3]``)."""
        return self.get_submodule(node_id)

    def fixed_noise(self) -> list[torch.Tensor]:
        """``noises.noise_{i}`` in order, each ``[1, 1, r, r]``."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_noises)]

    def extra_repr(self) -> str:
        c = self.config
        return f"size={c.size}, channel_multiplier={c.channel_multiplier}, style_dim={c.style_dim}"
