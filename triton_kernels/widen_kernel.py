"""Triton kernel of widen (``widen.py``): features and skip walked as one map, a gather per pixel."""

import torch
import triton
import triton.language as tl

from ._tiles import empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index
from .widen import widened_size


@triton.jit
def widen_kernel(x, skip, out_x, out_s, C_x, W_in, pad, sxb, sxc, sxh, sxw, ssb, ssc, ssh, ssw,
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


def widen(x: torch.Tensor, skip: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [B, C, H, W]`` and ``skip [B, C_skip, H, W]`` widened by ``mode``, each in its input's layout."""
    b, c, h, w = x.shape
    size = widened_size(h, w, mode)
    out_x = empty_map((b, c, *size), x)
    out_s = empty_map((b, skip.shape[1], *size), skip)
    space = (b, c + skip.shape[1], *size)
    cl = is_channels_last(out_x)
    grid, br, bi = tile_grid(space, cl)
    widen_kernel[grid](x, skip, out_x, out_s, c, w, w // 2, *x.stride(), *skip.stride(), *out_x.stride(),
                       *out_s.stride(), *space, MODE=mode, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    return out_x, out_s
