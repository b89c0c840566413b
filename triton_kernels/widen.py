"""Widen features and the RGB skip together (the ``expand`` task).

``horizontal``: nearest resize to (H, 2W), every column duplicated; ``vertical``:
nearest resize to (2H, W), every row duplicated; any padding mode (``reflect``,
``replicate``, ``circular``, ``constant``): pad ``W // 2`` columns on each side
with ``F.pad`` semantics (``reflect`` mirrors without repeating the edge).

One launch widens both maps: the kernel walks the features and the skip as one map of
``C + C_skip`` channels, each output pixel reading its one source pixel (a gather,
no arithmetic), so outputs equal the reference bit for bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..errors import SoatError
from ._dispatch import check_maps, use_triton
from ._tiles import empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built

STRETCH_MODES = ("horizontal", "vertical")
PAD_MODES = ("reflect", "replicate", "circular", "constant")
MODES = STRETCH_MODES + PAD_MODES


def widen_one_ref(x: torch.Tensor, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    if mode == "horizontal":
        return F.interpolate(x, size=(h, 2 * w), mode="nearest")
    if mode == "vertical":
        return F.interpolate(x, size=(2 * h, w), mode="nearest")
    return F.pad(x, (w // 2, w // 2, 0, 0), mode)


def widen_ref(x: torch.Tensor, skip: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, C, H, W]``, ``skip [B, 3, H, W]`` -> both widened the same way."""
    return widen_one_ref(x, mode), widen_one_ref(skip, mode)


def _widen_kernel(x, skip, out_x, out_s, C_x, H_in, W_in, pad, sxb, sxc, sxh, sxw, ssb, ssc, ssh, ssw,
                  sob, soc, soh, sow, spb, spc, sph, spw, B, C, H, W,
                  MODE: tl.constexpr, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)  # over the widened [B, C_x + C_skip, H, W]
    hs = h
    ws = w
    inside = ok
    if MODE == "horizontal":
        ws = w // 2
    elif MODE == "vertical":
        hs = h // 2
    else:
        ws = w - pad
        if MODE == "reflect":
            ws = tl.where(ws < 0, -ws, tl.where(ws >= W_in, 2 * (W_in - 1) - ws, ws))
        elif MODE == "replicate":
            ws = tl.minimum(tl.maximum(ws, 0), W_in - 1)
        elif MODE == "circular":
            ws = (ws + W_in) % W_in  # pad <= W_in, so ws + W_in >= 0
        else:  # constant: zeros outside the source columns
            inside = inside & (ws >= 0) & (ws < W_in)
    is_x = c < C_x
    cs = c - C_x
    vx = tl.load(x + offset(b, c, hs, ws, sxb, sxc, sxh, sxw), mask=inside & is_x, other=0.0)
    vs = tl.load(skip + offset(b, cs, hs, ws, ssb, ssc, ssh, ssw), mask=inside & ~is_x, other=0.0)
    tl.store(out_x + offset(b, c, h, w, sob, soc, soh, sow), vx, mask=ok & is_x)
    tl.store(out_s + offset(b, cs, h, w, spb, spc, sph, spw), vs, mask=ok & ~is_x)


@functools.cache
def _kernel():
    return jit(_widen_kernel)


def widened_size(height: int, width: int, mode: str) -> tuple[int, int]:
    if mode == "horizontal":
        return height, 2 * width
    if mode == "vertical":
        return 2 * height, width
    return height, width + 2 * (width // 2)


def widen(x: torch.Tensor, skip: torch.Tensor, mode: str, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Widen (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x: ``[B, C, H, W]`` features; skip: ``[B, C_skip, H, W]`` RGB skip (any strides).
        mode: one of ``MODES``.
    Returns:
        both maps widened, each in its input's layout (NCHW or channels_last).
    """
    check_maps({"x": x, "skip": skip}, same="BHW")
    if mode not in MODES:
        raise SoatError(f"mode={mode!r} is not a widen mode; use one of {', '.join(MODES)}")
    if not use_triton(impl, x, skip):
        return widen_ref(x, skip, mode)
    b, c, h, w = x.shape
    size = widened_size(h, w, mode)
    out_x = empty_map((b, c, *size), x)
    out_s = empty_map((b, skip.shape[1], *size), skip)
    args = (x, skip, out_x, out_s, c, h, w, w // 2, *x.stride(), *skip.stride(), *out_x.stride(), *out_s.stride())
    launch(_kernel(), (b, c + skip.shape[1], *size), is_channels_last(out_x), args, MODE=mode)
    return out_x, out_s
