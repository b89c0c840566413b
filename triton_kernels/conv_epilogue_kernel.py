"""Triton kernels of the styled-conv epilogue (``conv_epilogue.py``): ``y`` read once, fp32, one rounding."""

from typing import Callable

import torch
import triton
import triton.language as tl

from ._tiles import direct, empty_map, is_channels_last, tile_grid
from .tiles_kernel import offset, tile_index

UP_TILE = 1024  # quads x channels per program of the upsampling epilogue (four fp32 accumulators each)


@triton.jit
def _finish(v, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod, sdb, sdc, snb, snh, snw,
            sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr):
    """Demodulate, add noise and bias, leaky ReLU * sqrt(2); store x and/or the next conv's input."""
    d = tl.load(demod + b * sdb + c * sdc, mask=ok).to(tl.float32)
    n = tl.load(noise + b.to(tl.int64) * snb + h * snh + w * snw, mask=ok).to(tl.float32)
    nw = tl.load(noise_weight).to(tl.float32)
    bi = tl.load(bias + c, mask=c < C).to(tl.float32)
    v = v * d + nw * n + bi
    v = tl.where(v >= 0, v, v * 0.2) * 1.4142135623730951
    if WRITE_X:
        tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), v.to(out.dtype.element_ty), mask=ok)
    if WRITE_MOD:  # from the fp32 value: one rounding, where modulating the stored x would take two
        s = tl.load(next_style + b * stb + c * stc, mask=ok).to(tl.float32)
        tl.store(out_mod + offset(b, c, h, w, smb, smc, smh, smw), (v * s).to(out_mod.dtype.element_ty), mask=ok)


@triton.jit
def conv_epilogue_kernel(y, demod, noise, noise_weight, bias, next_style, out, out_mod,
                         syb, syc, syh, syw, sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc,
                         B, C, H, W, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr,
                         CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    v = tl.load(y + offset(b, c, h, w, syb, syc, syh, syw), mask=ok).to(tl.float32)
    _finish(v, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod, sdb, sdc, snb, snh, snw,
            sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X, WRITE_MOD)


@triton.jit
def conv_epilogue_up_kernel(y, demod, noise, noise_weight, bias, next_style, out, out_mod,
                            syb, syc, syh, syw, sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw,
                            stb, stc, Hy, Wy,
                            B, C, Hq, Wq, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr,
                            BR: tl.constexpr, BI: tl.constexpr):
    """The upsampling layer's epilogue, one 2x2 output quad per row of the tile (channels inner):
    the quad's 16-tap blurs share a 5x5 input footprint, so each program loads 25 taps for 4
    outputs instead of 64."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    c = tl.program_id(1) * BI + tl.arange(0, BI)[None, :]
    qd = rows % Wq
    p = (rows // Wq) % Hq
    b = rows // (Wq * Hq)
    ok = (b < B) & (c < C)
    plane = y + offset(b, c, 0, 0, syb, syc, syh, syw)
    a00 = tl.zeros([BR, BI], dtype=tl.float32)
    a01 = tl.zeros([BR, BI], dtype=tl.float32)
    a10 = tl.zeros([BR, BI], dtype=tl.float32)
    a11 = tl.zeros([BR, BI], dtype=tl.float32)
    # output row 2p + dy reads input rows 2p + dy - 1 .. 2p + dy + 2 with taps k = 1, 3, 3, 1:
    # input row 2p + r - 1 (r = 0..4) is tap r - dy of output dy (k(i) = 1 + i * (3 - i))
    for r in tl.static_range(5):
        yr = 2 * p + (r - 1)
        row_ok = ok & (yr >= 0) & (yr < Hy)
        for q in tl.static_range(5):
            xq = 2 * qd + (q - 1)
            t = tl.load(plane + yr * syh + xq * syw, mask=row_ok & (xq >= 0) & (xq < Wy), other=0.0).to(tl.float32)
            if r <= 3:
                if q <= 3:
                    a00 += t * ((1 + r * (3 - r)) * (1 + q * (3 - q)))
                if q >= 1:
                    a01 += t * ((1 + r * (3 - r)) * (1 + (q - 1) * (4 - q)))
            if r >= 1:
                if q <= 3:
                    a10 += t * ((1 + (r - 1) * (4 - r)) * (1 + q * (3 - q)))
                if q >= 1:
                    a11 += t * ((1 + (r - 1) * (4 - r)) * (1 + (q - 1) * (4 - q)))
    scale = 1.0 / 64.0 * 4.0  # the reference kernel: outer([1, 3, 3, 1]) / 64 * up_factor^2
    h = 2 * p
    w = 2 * qd
    _finish(a00 * scale, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X, WRITE_MOD)
    _finish(a01 * scale, b, c, h, w + 1, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X, WRITE_MOD)
    _finish(a10 * scale, b, c, h + 1, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X, WRITE_MOD)
    _finish(a11 * scale, b, c, h + 1, w + 1, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, C, WRITE_X, WRITE_MOD)


def conv_epilogue_modulated(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                            bias: torch.Tensor, up: bool, next_style: torch.Tensor | None,
                            write_x: bool, wrap: Callable = direct) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(x or None, x_mod or None)``, each ``[B, C, H, W]`` in ``y``'s layout (``conv_epilogue.py``; ``wrap``:
    ``_tiles.direct``)."""
    B, C, Hy, Wy = y.shape
    H, W = (Hy - 1, Wy - 1) if up else (Hy, Wy)
    out = empty_map((B, C, H, W), y) if write_x else None
    out_mod = empty_map((B, C, H, W), y) if next_style is not None else None
    # a map the flags leave unread and unwritten gets a valid stand-in
    first = out if out is not None else out_mod
    out_mod_arg = first if out_mod is None else out_mod
    style_arg, style_strides = (first, (0, 0)) if next_style is None else (next_style, next_style.stride())
    # expanded to the batch: stride 0 for one shared map, with no test of its batch (a traced batch is symbolic)
    nsb, _, nsh, nsw = noise.expand(B, 1, H, W).stride()
    # demod and the style through their strides: the fast path passes column slices of one buffer of all layers'
    # factors, and a style list's entries may be slices of one flat buffer
    args = (y, demod, noise, noise_weight, bias.reshape(-1), style_arg, first, out_mod_arg,
            *y.stride(), *demod.stride(), nsb, nsh, nsw, *first.stride(), *out_mod_arg.stride(), *style_strides)
    flags = {"WRITE_X": write_x, "WRITE_MOD": next_style is not None}
    if not up:
        cl = is_channels_last(first)
        grid, br, bi = tile_grid(first.shape, cl)
        wrap(conv_epilogue_kernel)[grid](*args, B, C, H, W, **flags, CL=cl, BR=br, BI=bi, enable_fp_fusion=False)
    else:  # one 2x2 output quad per row of the tile, channels inner
        grid, br, bi = tile_grid((B, C, H // 2, W // 2), True, UP_TILE)
        wrap(conv_epilogue_up_kernel)[grid](*args, Hy, Wy, B, C, H // 2, W // 2, **flags, BR=br, BI=bi,
                                            enable_fp_fusion=False)
    return out, out_mod
