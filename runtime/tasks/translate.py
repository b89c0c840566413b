"""Image-to-image translation between two generators that share sigma space (toonification).

Both generators run side by side on a shared input: the constant, conv1 and to_rgb1
outputs are lerped with ``early_alpha``; every later node ``i`` is run by generator 1
with ``styles1[i]`` and generator 2 with ``styles2[i]`` and lerped with ``early_alpha``
when ``i < num_swap``, else ``alpha``. A number sweeps the translation continuously; a
mask ``[1 or B, 1, H, W]`` translates locally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...triton_kernels import ops as K
from ...errors import SoatError
from ..checks import check_float, check_int
from ..noise import NoiseArg
from .blend import check_pair, lerp_chain, separate_runs
from .local import checked_mask

if TYPE_CHECKING:
    from ..generator import Generator


def _alpha(value, name: str, batch: int, G: Generator) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return checked_mask(value, batch, G)
    try:
        value = check_float(value, name, 0, 1)
    except SoatError:  # the same values refused, naming both forms alpha takes
        raise SoatError(f"{name}={value!r} must be a number in [0, 1] or a mask tensor [1 or B, 1, H, W]") from None
    return torch.full((1, 1, 1, 1), value, device=G.device, dtype=G.dtype)


def translate(G1: Generator, G2: Generator, styles1, styles2, num_swap: int = 6, alpha=0.7, early_alpha=0.0,
              noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, R]``: generator 1's image translated toward generator 2's domain."""
    if G1.config != G2.config:
        raise SoatError(f"translate needs two generators of one layout; got {G1.config} and {G2.config}")
    if (G1.device, G1.dtype) != (G2.device, G2.dtype):
        raise SoatError("translate needs both generators on the same device and dtype")
    num_swap = check_int(num_swap, "num_swap", 0)
    s1, s2 = check_pair(G1, styles1, styles2, G2)
    batch = s1[0].shape[0]
    late, early = _alpha(alpha, "alpha", batch, G1), _alpha(early_alpha, "early_alpha", batch, G1)

    def combine(node, a, b):
        return K.mask_lerp(a, b, early if node.style_index < max(num_swap, 2) else late)

    x = K.mask_lerp(G1.constant(s1), G2.constant(s2), early)
    noise1 = G1.noise_fn(noise)
    noise2 = G2.noise_fn(noise) if noise == "fixed" else None  # random/explicit noise: one draw, shared
    rgb = lerp_chain(separate_runs(G1.run_node, G2.run_node, s1, s2, noise1, noise2), G1.chain[1:], combine, x)
    return rgb.clamp(-1, 1)
