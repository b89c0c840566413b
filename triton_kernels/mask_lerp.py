"""Mask lerp: ``out = (1 - a) * x1 + a * x2`` with ``a`` a mask resized bilinearly to the map.

``a = F.interpolate(mask, size=(H, W), mode="bilinear", align_corners=False)`` (no
antialiasing: plain 2-tap sampling even when shrinking), or 0 everywhere when
``zero`` is set (the per-layer cut-off of ``num_blend`` / pose alignment).
A ``[1, 1, 1, 1]`` mask is a scalar alpha.

The kernel samples the full-resolution mask at each output pixel with PyTorch's rules
(source index ``scale * (i + 0.5) - 0.5`` clamped at 0, ``scale = in / out`` in fp32,
the upper tap clamped to the edge), rounds alpha to the map's dtype as the reference
does, and lerps in fp32. The resized mask is never materialised: each program computes
alpha for its pixels once and applies it to several channels. With ``zero`` the kernel
is a copy of ``x1`` and reads neither ``x2`` nor the mask.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SoatError
from ._dispatch import check_maps, use_triton
from ._tiles import empty_map, is_channels_last, jit, launch, run, tile_shape

tl = tile_index = offset = taps = mask_alpha = lerp_store = None  # bound by _kernel() on first use

MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
PROGRAMS = 1024  # NCHW grid target: enough programs to fill the GPU, each reusing its alpha over channels
PIXELS = 1024  # NCHW pixel tile: small, so that small maps still give many programs


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The mask at a layer's size, as the reference resizes it."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


def mask_lerp_ref(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool = False) -> torch.Tensor:
    """``x1, x2 [B, C, H, W]``, ``mask [1 or B, 1, Hm, Wm]`` -> ``[B, C, H, W]``."""
    alpha = resize_mask(mask.to(x1.dtype), tuple(x1.shape[-2:]))
    if zero:
        alpha = torch.zeros_like(alpha)
    return (1 - alpha) * x1 + alpha * x2


def _taps(i, scale, n_in):
    """Bilinear taps of output index ``i``: lower and upper source index, and the upper weight."""
    # fused multiply-add, as PyTorch's compiled CPU and CUDA kernels evaluate it
    src = tl.maximum(tl.fma(scale, i.to(tl.float32) + 0.5, -0.5), 0.0)
    lo = tl.minimum(src.to(tl.int32), n_in - 1)  # truncation is floor here: src >= 0
    hi = tl.minimum(lo + 1, n_in - 1)
    lam = tl.minimum(tl.maximum(src - lo.to(tl.float32), 0.0), 1.0)
    return lo, hi, lam


def _mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w):
    """Alpha at output pixels ``(h, w)`` of batch ``b`` as the reference computes it, in fp32."""
    h0, h1, lh = taps(h, scale_h, Hm)
    w0, w1, lw = taps(w, scale_w, Wm)
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


def _lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                sob, soc, soh, sow, ZERO: tl.constexpr):
    v1 = tl.load(x1 + offset(b, c, h, w, s1b, s1c, s1h, s1w), mask=ok)
    if ZERO:
        res = v1
    else:
        v2 = tl.load(x2 + offset(b, c, h, w, s2b, s2c, s2h, s2w), mask=ok).to(tl.float32)
        res = ((1 - alpha) * v1.to(tl.float32) + alpha * v2).to(out.dtype.element_ty)
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), res, mask=ok)


def _mask_lerp_kernel(x1, x2, mask, out, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, smb, smh, smw,
                      sob, soc, soh, sow, Hm, Wm, scale_h, scale_w, B, C, H, W, ZERO: tl.constexpr,
                      CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr, CG: tl.constexpr):
    if CL:  # the generic tile: rows are pixels, so alpha is computed once per row of channels
        b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
        alpha = 0.0 if ZERO else mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w)
        lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
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
        alpha = 0.0 if ZERO else mask_alpha(mask, out, b, h, w, ok, smb, smh, smw, Hm, Wm, scale_h, scale_w)
        for c in range(c0, tl.minimum(c0 + CG, C)):
            lerp_store(x1, x2, out, b, c, h, w, ok, alpha, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                       sob, soc, soh, sow, ZERO)


@functools.cache
def _kernel():
    globals().update(taps=jit(_taps), mask_alpha=jit(_mask_alpha), lerp_store=jit(_lerp_store))
    return jit(_mask_lerp_kernel)


def _launch(out: torch.Tensor, args: tuple, zero: bool) -> None:
    """NCHW: one program per (image, group of CG channels, [BR, BI] pixel tile), about
    ``PROGRAMS`` in all but at least 8 channels a group; channels_last: the generic tiles."""
    if is_channels_last(out):
        launch(_kernel(), out.shape, True, args, ZERO=zero, CG=1)
        return
    b, c, h, w = out.shape
    if out.numel() == 0:
        return
    br, bi = tile_shape(h, w, PIXELS)
    row_blocks, col_blocks = -(-h // br), -(-w // bi)
    cg = min(c, max(8, -(-c * b * row_blocks * col_blocks // PROGRAMS)))
    grid = (b * -(-c // cg) * row_blocks, col_blocks)
    run(_kernel(), grid, args, b, c, h, w, ZERO=zero, CL=False, BR=br, BI=bi, CG=cg)


def check_mask(mask: torch.Tensor, x1: torch.Tensor) -> None:
    batch = x1.shape[0]
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        batches = "1" if batch == 1 else f"1 or {batch}"
        raise SoatError(f"mask must be a tensor [{batches}, 1, Hm, Wm] (x1 has batch {batch}); got {got}")
    if mask.shape[2] == 0 or mask.shape[3] == 0:
        raise SoatError(f"mask has shape {list(mask.shape)}; it needs at least one pixel")
    if mask.dtype not in MASK_DTYPES:
        raise SoatError(f"mask has dtype {mask.dtype}; use a floating-point mask")
    if mask.device != x1.device:
        raise SoatError(f"mask is on {mask.device} but x1 is on {x1.device}; put them on one device")


def mask_lerp(x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor, zero: bool = False,
              impl: str = "auto") -> torch.Tensor:
    """Mask lerp (see module docstring); Triton on CUDA, the reference elsewhere.

    Args:
        x1, x2: ``[B, C, H, W]`` maps of one shape, dtype and device (any strides).
        mask: ``[1 or B, 1, Hm, Wm]`` alpha in [0, 1] at any resolution, any float dtype.
        zero: alpha 0 everywhere (the output is ``x1``).
    Returns:
        ``[B, C, H, W]`` in ``x1``'s layout (NCHW or channels_last).
    """
    check_maps({"x1": x1, "x2": x2})
    check_mask(mask, x1)
    if not use_triton(impl, x1, x2, mask):
        return mask_lerp_ref(x1, x2, mask, zero)
    out = empty_map(x1.shape, x1)
    (hm, wm), (h, w) = mask.shape[-2:], x1.shape[-2:]
    mask_strides = (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(2), mask.stride(3))
    scales = (float(np.float32(hm) / np.float32(h)), float(np.float32(wm) / np.float32(w)))
    args = (x1, x2, mask, out, *x1.stride(), *x2.stride(), *mask_strides, *out.stride(), hm, wm, *scales)
    _launch(out, args, bool(zero))
    return out
