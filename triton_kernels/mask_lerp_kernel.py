"""Triton kernel of the mask lerp (``mask_lerp.py``): alpha sampled from the full-resolution mask per pixel."""

import numpy as np
import torch
import triton
import triton.language as tl

from ._tiles import empty_map, is_channels_last, tile_grid, tile_shape
from .tiles_kernel import offset, tile_index

PROGRAMS = 1024  # NCHW grid target: enough programs to fill the GPU, each reusing its alpha over channels
PIXELS = 1024  # NCHW pixel tile: small, so that small maps still give many programs


@triton.jit
def _taps(i, scale, n_in):
    """Bilinear taps of output index ``i``: lower and upper source index, and the upper weight."""
    # fused multiply-add, as PyTorch's compiled CPU and CUDA kernels evaluate it
    src = tl.maximum(tl.fma(scale, i.to(tl.float32) + 0.5, -0.5), 0.0)
    lo = tl.minimum(src.to(tl.int32), n_in - 1)  # truncation is floor here: src >= 0
    hi = tl.minimum(lo + 1, n_in - 1)
    lam = tl.minimum(tl.maximum(src - lo.to(tl.float32), 0.0), 1.0)
    return lo, hi, lam


@triton.jit
def _mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w):
    """Alpha at output pixels ``(h, w)`` of batch ``b`` as the reference computes it, in fp32."""
    h0, h1, lh = _taps(h, scale_h, Hm)
    w0, w1, lw = _taps(w, scale_w, Wm)
    mb = mask + b.to(tl.int64) * smb
    # the reference converts the mask to the map's dtype before resizing
    m00 = tl.load(mb + h0 * smh + w0 * smw, mask=ok).to(out.dtype.element_ty).to(tl.float32)
    m01 = tl.load(mb + h0 * smh + w1 * smw, mask=ok).to(out.dtype.element_ty).to(tl.float32)
    m10 = tl.load(mb + h1 * smh + w0 * smw, mask=ok).to(out.dtype.element_ty).to(tl.float32)
    m11 = tl.load(mb + h1 * smh + w1 * smw, mask=ok).to(out.dtype.element_ty).to(tl.float32)
    # PyTorch's CPU order: interpolate along W within each row, then across the two rows
    top = m00 * (1 - lw) + m01 * lw
    bottom = m10 * (1 - lw) + m11 * lw
    return (top * (1 - lh) + bottom * lh).to(out.dtype.element_ty).to(tl.float32)


@triton.jit
def _lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                sob, soc, soh, sow, ZERO: tl.constexpr):
    v1 = tl.load(x1 + offset(b, c, h, w, s1b, s1c, s1h, s1w), mask=ok)
    if ZERO:
        res = v1
    else:
        v2 = tl.load(x2 + offset(b, c, h, w, s2b, s2c, s2h, s2w), mask=ok).to(tl.float32)
        res = ((1 - alpha) * v1.to(tl.float32) + alpha * v2).to(out.dtype.element_ty)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), res, mask=ok)


@triton.jit
def mask_lerp_kernel(x1, x2, mask, out, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, smb, smh, smw,
                     sob, soc, soh, sow, Hm, Wm, scale_h, scale_w, B, C, H, W, ZERO: tl.constexpr,
                     CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr, CG: tl.constexpr):
    if CL:  # the generic tile: rows are pixels, so alpha is computed once per row of channels
        b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
        alpha = 0.0 if ZERO else _mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w)
        _lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                    sob, soc, soh, sow, ZERO)
    else:  # a [BR, BI] tile of one image's pixels, alpha computed once and reused over CG channels
        row_blocks = tl.cdiv(H, BR)
        groups = tl.cdiv(C, CG)
        pid = tl.program_id(0)
        b = pid // (row_blocks * groups)
        c0 = (pid // row_blocks) % groups * CG
        h = pid % row_blocks * BR + tl.arange(0, BR)[:, None]
        w = tl.program_id(1) * BI + tl.arange(0, BI)[None, :]
        ok = (h < H) & (w < W)
        alpha = 0.0 if ZERO else _mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w)
        for c in range(c0, tl.minimum(c0 + CG, C)):
            _lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                        sob, soc, soh, sow, ZERO)


def mask_lerp(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool) -> torch.Tensor:
    """``x1, x2 [B, C, H, W]``, ``mask [1 or B, 1, Hm, Wm]`` -> ``[B, C, H, W]`` in ``x1``'s layout.

    NCHW: one program per (image, group of CG channels, [BR, BI] pixel tile), about
    ``PROGRAMS`` in all but at least 8 channels a group; channels_last: the generic tiles.
    """
    out = empty_map(x1.shape, x1)
    (hm, wm), (b, c, h, w) = mask.shape[-2:], out.shape
    mask_strides = (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(2), mask.stride(3))
    scales = (float(np.float32(hm) / np.float32(h)), float(np.float32(wm) / np.float32(w)))  # in fp32, as torch
    args = (x1, x2, mask, out, *x1.stride(), *x2.stride(), *mask_strides, *out.stride(), hm, wm, *scales, b, c, h, w)
    if is_channels_last(out):
        grid, br, bi = tile_grid(out.shape, True)
        mask_lerp_kernel[grid](*args, ZERO=zero, CL=True, BR=br, BI=bi, CG=1, enable_fp_fusion=False)
    elif out.numel():
        br, bi = tile_shape(h, w, PIXELS)
        row_blocks, col_blocks = triton.cdiv(h, br), triton.cdiv(w, bi)
        cg = min(c, max(8, triton.cdiv(c * b * row_blocks * col_blocks, PROGRAMS)))
        grid = (b * triton.cdiv(c, cg) * row_blocks, col_blocks)
        mask_lerp_kernel[grid](*args, ZERO=zero, CL=False, BR=br, BI=bi, CG=cg, enable_fp_fusion=False)
    return out
