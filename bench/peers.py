"""The anchor every speed table carries: ``torch.compile`` of a plain PyTorch StyleGAN2, timed in the same run.

The plain form is the synthesis network as one ``nn.Module`` built from the exported graph
modules (``soat.runtime.graph_modules``: dense shared-weight convs with modulated inputs and
demodulated outputs, depthwise FIR blurs, plain torch ops throughout, as NVlabs writes
``fused_modconv=False``), fixed noise, output clamped. ``torch.compile(mode="reduce-overhead")``
fuses its elementwise ops with Inductor's Triton kernels and replays CUDA graphs: the
strongest general-purpose peer a user could build without this project.

    soat bench --peers --tasks generate --dtypes fp16,bf16 --batches 1,8,128

adds rows ``compile-fp16`` ... (generate on the suite's styles) to the table; compile time is
reported apart, in each row's ``extra``.
"""

from __future__ import annotations

import torch
from torch import nn

from soat.runtime.chain import TO_RGB, build_chain
from soat.runtime.graph_modules import graph_module
from soat.runtime.sources import load_weights


class PlainStyleGAN2(nn.Module):
    """sigma list ``[[B, C_k]]`` -> image ``[B, 3, R, R]``: the chain's graph modules in order, fixed noise."""

    def __init__(self, source: str, size: int | None, channel_multiplier: int | None):
        super().__init__()
        weights, _ = load_weights(source, size, channel_multiplier)
        self.chain = build_chain(weights.config)
        self.nodes = nn.ModuleList(graph_module(weights, node.id) for node in self.chain)
        for i, noise in enumerate(weights.fixed_noise()):
            self.register_buffer(f"noise_{i}", noise)

    def forward(self, styles: list[torch.Tensor]) -> torch.Tensor:
        x, rgb = self.nodes[0](styles[0]), None
        for node, module in zip(self.chain[1:], self.nodes[1:]):
            style = styles[node.style_index]
            if node.kind != TO_RGB:
                x = module(x, style, getattr(self, f"noise_{node.noise_index}"))
            elif rgb is None:
                rgb = module(x, style)
            else:
                rgb = module(x, rgb, style)
        return rgb.clamp(-1, 1)


def compiled_peer(source: str, size: int | None, channel_multiplier: int | None, device: str,
                  dtype: torch.dtype) -> nn.Module:
    peer = PlainStyleGAN2(source, size, channel_multiplier).to(device, dtype).eval().requires_grad_(False)
    return torch.compile(peer.to(memory_format=torch.channels_last), mode="reduce-overhead")
