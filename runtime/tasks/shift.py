"""Shift: generation from one image by replicating a patch (the paper's Shift operator).

At every node whose resolution is in ``layers``, the output is blended with a copy of
itself shifted so that the source patch lands on each target:
``f <- lerp(f, Shift(f, d), a)``, ``a = strength`` inside a target and 0 elsewhere
(``soat.triton_kernels.shift_lerp``). Features and the RGB skip are both shifted, so
the replicated patch keeps its colours; later layers render its detail afresh.
Boxes are in output pixels and scale to each layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from ...triton_kernels import ops as K
from ..chain import TO_RGB, advance
from ..checks import check_float
from ...errors import SoatError
from ..noise import NoiseArg
from .boxes import box_list, check_box

if TYPE_CHECKING:
    from ..generator import Generator

DEFAULT_LAYERS = {8, 16, 32}


def _targets(source: tuple, targets: Any, size: int) -> list[tuple[int, int, int, int]]:
    sx, sy, sw, sh = source
    out = []
    for i, t in enumerate(box_list(targets, "targets")):
        if not isinstance(t, (list, tuple)) or len(t) not in (2, 4):
            raise SoatError(f"targets[{i}]={t!r} must be (x, y) or (x, y, w, h) in output pixels")
        if len(t) == 4 and (int(t[2]), int(t[3])) != (sw, sh):
            raise SoatError(f"targets[{i}]={tuple(t)} must have the source box's size {sw}x{sh}")
        out.append(check_box((t[0], t[1], sw, sh), f"targets[{i}]", size, size))
    return out


def layer_moves(source: tuple, targets: Sequence[tuple], size: int, res: int) -> list[tuple[int, int, int, int, int, int]]:
    """Moves ``(ty, tx, h, w, dy, dx)`` for ``shift_lerp`` on a ``res x res`` map."""
    f = res / size
    sx, sy, sw, sh = (round(v * f) for v in source)
    moves = []
    for tx, ty, _, _ in targets:
        tx, ty = round(tx * f), round(ty * f)
        w = min(max(1, sw), res - max(sx, tx))
        h = min(max(1, sh), res - max(sy, ty))
        if w > 0 and h > 0:
            moves.append((ty, tx, h, w, ty - sy, tx - sx))
    return moves


def check_layers(layers: Sequence[int], size: int) -> set[int]:
    valid = [2 ** k for k in range(3, size.bit_length())]
    if isinstance(layers, int) or not all(r in valid for r in layers) or not layers:
        raise SoatError(f"layers={tuple(layers)!r}: give resolutions among {valid}")
    return set(layers)


def shift(G: Generator, styles, source_box, targets, layers: Sequence[int] | None = None, strength: float = 1.0,
          noise: NoiseArg = "fixed") -> torch.Tensor:
    """``[B, 3, R, R]`` with the source patch replicated onto every target.

    Args:
        source_box: ``(x, y, w, h)`` of the patch to replicate, in output pixels.
        targets: one or more positions ``(x, y)`` (or boxes of the source's size).
        layers: resolutions at which features are shifted (coarse ones move structure);
            default 8, 16 and 32.
        strength: alpha inside the targets, in [0, 1].
    """
    s = G.check_styles(styles)
    src = check_box(source_box, "source_box", G.size, G.size)
    tgts = _targets(src, targets, G.size)
    shift_at = check_layers(DEFAULT_LAYERS & set(range(G.size + 1)) if layers is None else layers, G.size)
    strength = check_float(strength, "strength", 0, 1)
    noise_at = G.noise_fn(noise)
    x, rgb = G.constant(s), None
    for node in G.chain[1:]:
        x_out, rgb = G.run_chain(s, noise_at, [node], x, rgb)
        out = rgb if node.kind == TO_RGB else x_out
        if node.resolution in shift_at:
            out = K.shift_lerp(out, layer_moves(src, tgts, G.size, node.resolution), strength)
        x, rgb = advance(node, out, x_out, rgb)
    return rgb.clamp(-1, 1)
