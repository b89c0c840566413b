"""Expand from a single image (the reference's ``singan``): widen the maps after the 8x8 block.

The normal chain; right after the 8x8 block (its conv_up, conv and to_rgb) the
features and the RGB skip are widened together (``soat.triton_kernels.widen``), and
the rest of the chain runs on the wider maps. Output ``[B, 3, R, 2R]``, or
``[B, 3, 2R, R]`` for ``vertical``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...triton_kernels import ops as K
from ...errors import SoatError
from ..noise import NoiseArg

if TYPE_CHECKING:
    from ..generator import Generator

WIDEN_AFTER = "to_rgbs.0"  # the 8x8 block's ToRGB


def expand(G: Generator, styles, mode: str = "reflect", noise: NoiseArg = "random") -> torch.Tensor:
    if mode not in K.WIDEN_MODES:
        raise SoatError(f"mode={mode!r} is not an expand mode; use one of {', '.join(K.WIDEN_MODES)}")
    s = G.check_styles(styles)
    noise_at = G.noise_fn(noise)
    cut = next(i for i, n in enumerate(G.chain) if n.id == WIDEN_AFTER) + 1
    x, rgb = G.run_chain(s, noise_at, G.chain[1:cut], G.constant(s))
    x, rgb = K.widen(x, rgb, mode)
    _, rgb = G.run_chain(s, noise_at, G.chain[cut:], x, rgb)
    return rgb.clamp(-1, 1)
