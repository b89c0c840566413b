"""The embedded default model: a seeded random StyleGAN2 whose images show structure at several scales."""

from __future__ import annotations

import torch

from .config import GeneratorConfig
from .weights import StyleGAN2Weights


def random_weights(config: GeneratorConfig, seed: int = 0) -> StyleGAN2Weights:
    """The embedded default: a seeded random generator whose images show structure at several scales.

    Rosinality's initialisation, except that biases and noise strengths are non-zero
    (so every term of the layer arithmetic is exercised), affine weights are doubled
    (more varied layouts), and ToRGB weights shrink with resolution, so coarse layers
    set the layout and the sum of skips stays mostly inside (-1, 1) (~90% of pixels).
    """
    gen = torch.Generator().manual_seed(seed)
    weights = StyleGAN2Weights(config)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    with torch.no_grad():
        for lin in list(weights.style)[1:]:
            lin.weight.copy_(randn(*lin.weight.shape) / lin.lr_mul)
            lin.bias.copy_(randn(*lin.bias.shape) * 0.1 / lin.lr_mul)
        weights.input.input.copy_(randn(*weights.input.input.shape))
        for name, m in weights.named_modules():
            if hasattr(m, "modulation"):
                m.weight.copy_(randn(*m.weight.shape))
                # twice rosinality's spread, so that different z give visibly different layouts
                m.modulation.weight.copy_(2.0 * randn(*m.modulation.weight.shape))
                m.modulation.bias.copy_(1.0 + 0.1 * randn(*m.modulation.bias.shape))
        for conv in [weights.conv1, *weights.convs]:
            conv.noise.weight.copy_(0.05 + 0.1 * torch.rand(1, generator=gen))
            conv.activate.bias.copy_(0.1 * randn(*conv.activate.bias.shape))
        for level, rgb in enumerate([weights.to_rgb1, *weights.to_rgbs]):
            rgb.conv.weight.mul_(0.3 * 0.85 ** level)
            rgb.bias.copy_(0.05 * randn(1, 3, 1, 1))
        for buf in weights.noises.buffers():
            buf.copy_(randn(*buf.shape))
    return weights
