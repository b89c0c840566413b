"""Blend, merge extension and merge: both styles at every layer on one shared input, lerped.

The schedule (docs/contract.md#blend): at each node, run it with sigma1 and with sigma2 on the
same (already blended) input and skip, then ``lerp(out1, out2, alpha)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ...triton_kernels import ops as K
from ..chain import LayerNode, RunNode, advance
from ...errors import SoatError
from ..noise import NoiseArg, NoiseFn, node_noise

if TYPE_CHECKING:
    from ..generator import Generator

# (node, out_sigma1, out_sigma2) -> blended output
Combine = Callable[[LayerNode, torch.Tensor, torch.Tensor], torch.Tensor]

BLEND_MODES = {"horizontal": 3, "vertical": 2}


def lerp_chain(run1: RunNode, run2: RunNode, s1: Sequence[torch.Tensor], s2: Sequence[torch.Tensor],
               nodes: Sequence[LayerNode], combine: Combine, x: torch.Tensor, noise1: NoiseFn,
               noise2: NoiseFn | None = None, rgb: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``nodes`` with both styles on the shared input; returns the final blended RGB.

    ``run1``/``run2`` run a node (two generators for translation, one otherwise);
    each node's noise is resolved once per noise function, so both runs share it.
    """
    for node in nodes:
        n1 = node_noise(node, x, noise1)
        n2 = n1 if noise2 is None else node_noise(node, x, noise2)
        out1 = run1(node, x, s1[node.style_index], n1, rgb)
        out2 = run2(node, x, s2[node.style_index], n2, rgb)
        x, rgb = advance(node, combine(node, out1, out2), x, rgb)
    return rgb


def check_pair(G: Generator, styles1, styles2,
               G2: Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both style lists checked (``styles2`` against ``G2`` where two generators run), of one batch."""
    s1, s2 = G.check_styles(styles1, "styles1"), (G2 or G).check_styles(styles2, "styles2")
    if s1[0].shape[0] != s2[0].shape[0]:
        raise SoatError(f"styles1 has batch {s1[0].shape[0]} but styles2 has {s2[0].shape[0]}; they must match")
    return s1, s2


def blend(G: Generator, styles1, styles2, mode: str = "horizontal", noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, R]``: sigma1 on the left (top), sigma2 on the right (bottom), ramp-blended at every layer."""
    if mode not in BLEND_MODES:
        raise SoatError(f"mode={mode!r} is not a blend mode; use 'horizontal' or 'vertical'")
    s1, s2 = check_pair(G, styles1, styles2)
    axis = BLEND_MODES[mode]
    rgb = lerp_chain(G.run_node, G.run_node, s1, s2, G.chain[1:], lambda node, a, b: K.ramp_lerp(a, b, axis),
                     G.constant(s1), G.noise_fn(noise))
    return rgb.clamp(-1, 1)


def _merged(G: Generator, styles1, styles2, noise: NoiseArg, pad: bool) -> torch.Tensor:
    s1, s2 = check_pair(G, styles1, styles2)
    noise_at = G.noise_fn(noise)
    conv1 = G.chain[1]
    const = G.constant(s1)
    n0 = node_noise(conv1, const, noise_at)
    x = K.concat_w(G.run_node(conv1, const, s1[0], n0), G.run_node(conv1, const, s2[0], n0))
    rgb = lerp_chain(G.run_node, G.run_node, s1, s2, G.chain[2:], lambda node, a, b: K.ramp_lerp(a, b, 3, pad),
                     x, noise_at)
    return rgb.clamp(-1, 1)


def merge_extension(G: Generator, styles1, styles2, noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, 2R]``: conv1 outputs side by side, then a padded horizontal ramp over the doubled width."""
    return _merged(G, styles1, styles2, noise, pad=True)


def merge(G: Generator, styles1, styles2, noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, 2R]``: as ``merge_extension`` with ``alpha = linspace(0, 1, W)``."""
    return _merged(G, styles1, styles2, noise, pad=False)
