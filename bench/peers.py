"""The anchor every speed table carries: ``torch.compile`` of a plain PyTorch StyleGAN2, timed in the same run.

The plain form is the synthesis network as one ``nn.Module`` built from the exported graph
modules (``soat.runtime.graph_modules``: dense shared-weight convs with modulated inputs and
demodulated outputs, depthwise FIR blurs, plain torch ops throughout, as NVlabs writes
``fused_modconv=False``), fixed noise, output clamped. ``torch.compile(mode="reduce-overhead")``
fuses its elementwise ops with Inductor's Triton kernels and replays CUDA graphs: the
strongest general-purpose peer a user could build without this project.

    python -m soat.bench.peers --size 256 --dtypes fp16,bf16 --batches 1,8,128

prints rows in ``soat bench``'s format (``compile-fp16`` ...); compile time is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import soat
from soat.bench.suite import Result, format_row, percentile, task_call, time_call
from soat.runtime.chain import TO_RGB, build_chain
from soat.runtime.graph_modules import graph_module
from soat.runtime.load import parse_dtype
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


def peer_results(source: str, size: int | None, channel_multiplier: int | None, device: str, dtypes: list[str],
                 batches: list[int], warmup: int, iters: int) -> list[Result]:
    """Generate with the compiled peer, per dtype and batch, on the styles ``soat bench`` uses."""
    G = soat.load(source, size=size, channel_multiplier=channel_multiplier, device=device, graphs=False)
    results = []
    for name in dtypes:
        dtype = parse_dtype(name)
        peer = compiled_peer(source, size, channel_multiplier, device, dtype)
        for batch in batches:
            _, (styles,) = task_call(G, "generate", batch)
            styles = [s.to(dtype) for s in styles]
            start = time.perf_counter()
            with torch.no_grad():
                peer(styles)  # compile (and capture) for this shape
                samples = time_call(lambda: peer(styles), torch.device(device), warmup, iters)
            p50 = statistics.median(samples)
            results.append(Result("generate", f"compile-{name}", batch, p50, percentile(samples, 0.99),
                                  batch / p50 * 1e3, None,
                                  extra={"compile_and_warmup_s": round(time.perf_counter() - start, 1)}))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="random")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channel-multiplier", type=int, choices=[1, 2], default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--batches", default="1,8,128")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args()
    for r in peer_results(args.checkpoint, args.size, args.channel_multiplier, args.device, args.dtypes.split(","),
                          [int(b) for b in args.batches.split(",")], args.warmup, args.iters):
        print(format_row(r), f"(compile + warm-up {r.extra['compile_and_warmup_s']} s)")


if __name__ == "__main__":
    main()
