"""Input modulation of the shared-weight conv: ``out[b, c, h, w] = x[b, c, h, w] * s[b, c]``.

torch runs ``x * s[:, :, None, None]`` on a channels_last map through its generic
broadcasting loop (no vector loads); this kernel walks the map in its memory order
with the style row broadcast along the tile: one read, one write, at copy speed.
"""

from __future__ import annotations

import functools

import torch

from ._dispatch import use_triton
from ._tiles import empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built


def modulate_ref(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    return x * style[:, :, None, None]


def _modulate_kernel(x, style, out, sxb, sxc, sxh, sxw, sob, soc, soh, sow, B, C, H, W,
                     CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    v = tl.load(x + offset(b, c, h, w, sxb, sxc, sxh, sxw), mask=ok).to(tl.float32)
    s = tl.load(style + b * C + c, mask=ok).to(tl.float32)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), (v * s).to(out.dtype.element_ty), mask=ok)


@functools.cache
def _kernel():
    return jit(_modulate_kernel)


def modulate(x: torch.Tensor, style: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``x [B, C, H, W] * style [B, C]`` per channel (the runtime's own call: shapes come from the chain).

    Returns ``[B, C, H, W]`` in ``x``'s layout and dtype; rounds as the reference (one product).
    """
    if not use_triton(impl, x, style):
        return modulate_ref(x, style)
    out = empty_map(x.shape, x)
    launch(_kernel(), x.shape, is_channels_last(x), (x, style.contiguous(), out, *x.stride(), *out.stride()))
    return out
