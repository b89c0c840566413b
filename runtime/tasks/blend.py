"""Blend, merge extension and merge: both styles at every layer on one shared input, lerped.

The schedule (docs/contract.md#blend): at each node, run it with sigma1 and with sigma2 on the
same (already blended) input and skip, then ``lerp(out1, out2, alpha)``. With one generator and a
batch of at most ``SOAT_PAIRED_MAX_BATCH`` (off by default: ``PAIRED_MAX_BATCH``), the two runs of a node
are one run of batch 2B (sigma1's samples, then sigma2's, on the input and skip repeated): half the
launches, where small batches are bound by launches rather than by arithmetic.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ...triton_kernels import ops as K
from ..chain import LayerNode, RunNode, advance
from ...errors import SoatError
from ..noise import NoiseArg, NoiseFn, node_noise
from ..styles import flatten_styles

if TYPE_CHECKING:
    from ..generator import Generator

# (node, out_sigma1, out_sigma2) -> blended output
Combine = Callable[[LayerNode, torch.Tensor, torch.Tensor], torch.Tensor]
# (node, shared input x, shared skip or None) -> (the node's output with sigma1, with sigma2)
RunPair = Callable[[LayerNode, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]

BLEND_MODES = {"horizontal": 3, "vertical": 2}
# the largest batch whose two style lists run as one batch. Off (0) by default until a GPU run shows the gain
# (predicted within batch-1 noise, bench/NOTES.md round 8), and because the shape plan and the engines' profiles
# (shape_plan.py) plan each node at batch B, not 2B: SOAT_PAIRED_MAX_BATCH turns it on for the fast and torch
# backends (bench/kernels.py --levers times both forms)
PAIRED_MAX_BATCH = 0
PAIRED_ENV = "SOAT_PAIRED_MAX_BATCH"  # replaces it, e.g. 0 to time the separate runs (bench/kernels.py --levers)


def paired_max_batch() -> int:
    """``PAIRED_MAX_BATCH``, or the integer in ``SOAT_PAIRED_MAX_BATCH`` (read when a call runs: a call replayed
    from its CUDA graph keeps the schedule it was captured with)."""
    value = os.environ.get(PAIRED_ENV)
    if value is None:
        return PAIRED_MAX_BATCH
    if not value.strip().isdigit():
        raise SoatError(f"{PAIRED_ENV}={value!r} must be an integer >= 0 (the largest batch whose two style lists "
                        f"run as one batch; 0: never), or unset for {PAIRED_MAX_BATCH}")
    return int(value)


def lerp_chain(run_pair: RunPair, nodes: Sequence[LayerNode], combine: Combine, x: torch.Tensor,
               rgb: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``nodes`` with both styles on the shared input (``run_pair``); returns the final blended RGB."""
    for node in nodes:
        x, rgb = advance(node, combine(node, *run_pair(node, x, rgb)), x, rgb)
    return rgb


def separate_runs(run1: RunNode, run2: RunNode, s1: Sequence[torch.Tensor], s2: Sequence[torch.Tensor],
                  noise1: NoiseFn, noise2: NoiseFn | None = None) -> RunPair:
    """Each node run twice: by ``run1`` with sigma1, by ``run2`` with sigma2 (two generators for translation).

    Each node's noise is resolved once per noise function, so both runs share it.
    """
    def run_pair(node: LayerNode, x: torch.Tensor, rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n1 = node_noise(node, x, noise1)
        n2 = n1 if noise2 is None else node_noise(node, x, noise2)
        return run1(node, x, s1[node.style_index], n1, rgb), run2(node, x, s2[node.style_index], n2, rgb)
    return run_pair


def style_pair(G: Generator, s1: Sequence[torch.Tensor], s2: Sequence[torch.Tensor], noise_at: NoiseFn) -> RunPair:
    """One generator's two style lists: one run of batch 2B per node up to ``paired_max_batch()``, else two runs."""
    if s1[0].shape[0] > paired_max_batch():
        return separate_runs(G.run_node, G.run_node, s1, s2, noise_at)
    return PairedRuns(G, s1, s2, noise_at)


class PairedRuns:
    """A ``RunPair`` that runs each node once on a batch of 2B: sigma1's samples, then sigma2's.

    The input, the skip and a per-sample noise draw are repeated (a copy each, held while a ToRGB and the
    conv after it read the same input); the outputs are the two halves of the node's output.
    """

    def __init__(self, G: Generator, s1: Sequence[torch.Tensor], s2: Sequence[torch.Tensor], noise_at: NoiseFn):
        self.G, self.batch, self.noise_at = G, s1[0].shape[0], noise_at
        # both lists' rows in one buffer (three launches per call; the layers read its column slices)
        self.styles = G.unflatten_styles(torch.cat([flatten_styles(s1), flatten_styles(s2)]))
        self._x = self._x_twice = None

    def __call__(self, node: LayerNode, x: torch.Tensor, rgb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x is not self._x:
            self._x, self._x_twice = x, _twice(x)
        noise = node_noise(node, x, self.noise_at)
        if noise is not None and noise.shape[0] > 1:  # one draw per sample, the same for both style lists
            noise = _twice(noise)
        out = self.G.run_node(node, self._x_twice, self.styles[node.style_index], noise,
                              None if rgb is None else _twice(rgb))
        return out[:self.batch], out[self.batch:]


def _twice(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t])  # keeps a channels_last map channels_last


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
    rgb = lerp_chain(style_pair(G, s1, s2, G.noise_fn(noise)), G.chain[1:], lambda node, a, b: K.ramp_lerp(a, b, axis),
                     G.constant(s1))
    return rgb.clamp(-1, 1)


def _merged(G: Generator, styles1, styles2, noise: NoiseArg, pad: bool) -> torch.Tensor:
    s1, s2 = check_pair(G, styles1, styles2)
    run_pair = style_pair(G, s1, s2, G.noise_fn(noise))
    x = K.concat_w(*run_pair(G.chain[1], G.constant(s1), None))  # conv1's two outputs side by side
    rgb = lerp_chain(run_pair, G.chain[2:], lambda node, a, b: K.ramp_lerp(a, b, 3, pad), x)
    return rgb.clamp(-1, 1)


def merge_extension(G: Generator, styles1, styles2, noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, 2R]``: conv1 outputs side by side, then a padded horizontal ramp over the doubled width."""
    return _merged(G, styles1, styles2, noise, pad=True)


def merge(G: Generator, styles1, styles2, noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, 2R]``: as ``merge_extension`` with ``alpha = linspace(0, 1, W)``."""
    return _merged(G, styles1, styles2, noise, pad=False)
