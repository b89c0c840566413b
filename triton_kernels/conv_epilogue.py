"""Styled-conv epilogue: everything after the shared-weight conv of one layer, in one pass.

For the conv output ``y`` (``[B, C, H, W]``, or ``[B, C, H + 1, W + 1]`` for an upsampling
layer, whose stride-2 transposed conv makes ``2h + 1`` rows of ``h`` input rows, ``H = 2h``),
the output ``[B, C, H, W]`` is:

    v = blur(y) if up else y          # the [1, 3, 3, 1] x [1, 3, 3, 1] / 16 FIR, pad 1
    v = v * demod[b, c] + noise_weight * noise[b or 0, 0, h, w] + bias[c]
    out = leaky_relu(v, 0.2) * sqrt(2)

The reference runs this as five to seven torch ops (the blur a depthwise conv, which
cuDNN runs as a slow grouped direct conv): each a read and a write of the whole map.
The kernel reads ``y`` once (the blur's 16 taps come from cache) and writes ``out``
once, computing in fp32 and rounding once. Demodulation is applied after the blur
here and before it in the reference: both are linear per channel, so the two agree
to rounding (fp32 rel err ~1e-7).

``conv_epilogue_modulated`` also writes the next conv's modulated input, so inside a
run of layers the separate modulation pass (a read and a write) and its rounding go away.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .fir import depthwise_blur_weight
from ._dispatch import use_triton
from .modulate import modulate_ref
from ._tiles import empty_map, is_channels_last, jit, launch, run, tile_shape

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built

UP_TILE = 1024  # quads x channels per program of the upsampling epilogue (four fp32 accumulators each)


def conv_epilogue_ref(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                      bias: torch.Tensor, up: bool) -> torch.Tensor:
    """The torch ops the kernel replaces (as ``runtime/graph_modules.py`` writes them)."""
    out = y * demod[:, :, None, None]
    if up:
        blur = depthwise_blur_weight(y.shape[1]).to(y.device, y.dtype)
        out = F.conv2d(out, blur, padding=1, groups=y.shape[1])
    out = out + noise_weight * noise
    return F.leaky_relu(out + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2.0)


def _finish(v, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod, snb, snh, snw,
            sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr):
    """Demodulate, add noise and bias, leaky ReLU * sqrt(2); store x and/or the next conv's input."""
    d = tl.load(demod + b * C + c, mask=ok).to(tl.float32)
    n = tl.load(noise + b.to(tl.int64) * snb + h * snh + w * snw, mask=ok).to(tl.float32)
    nw = tl.load(noise_weight).to(tl.float32)
    bi = tl.load(bias + c, mask=c < C).to(tl.float32)
    v = v * d + nw * n + bi
    v = tl.where(v >= 0, v, v * 0.2) * 1.4142135623730951
    if WRITE_X:
        tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), v.to(out.dtype.element_ty), mask=ok)
    if WRITE_MOD:  # from the fp32 value: one rounding, where modulating the stored x would take two
        s = tl.load(next_style + b * C + c, mask=ok).to(tl.float32)
        tl.store(out_mod + offset(b, c, h, w, smb, smc, smh, smw), (v * s).to(out_mod.dtype.element_ty), mask=ok)


def _conv_epilogue_kernel(y, demod, noise, noise_weight, bias, next_style, out, out_mod,
                          syb, syc, syh, syw, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, Hy, Wy,
                          B, C, H, W, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr,
                          CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    v = tl.load(y + offset(b, c, h, w, syb, syc, syh, syw), mask=ok).to(tl.float32)
    _finish(v, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod, snb, snh, snw,
            sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X, WRITE_MOD)


def _conv_epilogue_up_kernel(y, demod, noise, noise_weight, bias, next_style, out, out_mod,
                             syb, syc, syh, syw, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, Hy, Wy,
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
            snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X, WRITE_MOD)
    _finish(a01 * scale, b, c, h, w + 1, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X, WRITE_MOD)
    _finish(a10 * scale, b, c, h + 1, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X, WRITE_MOD)
    _finish(a11 * scale, b, c, h + 1, w + 1, ok, demod, noise, noise_weight, bias, next_style, out, out_mod,
            snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, C, WRITE_X, WRITE_MOD)


@functools.cache
def _kernels():
    import triton
    _finish_jit = triton.jit(_finish)
    kernels = (jit(_conv_epilogue_kernel), jit(_conv_epilogue_up_kernel))
    globals()["_finish"] = _finish_jit  # the kernels resolve their helper in this module's globals
    return kernels


def conv_epilogue(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                  bias: torch.Tensor, up: bool, impl: str = "auto") -> torch.Tensor:
    """The fused epilogue (module docstring); Triton on CUDA, the reference elsewhere.

    The runtime's own call (shapes come from the chain, so no user-facing checks here).

    Args:
        y: conv output ``[B, C, Hy, Wy]``; ``Hy = H + 1`` when ``up`` (``H`` the output height,
            twice the conv input's), else ``H``.
        demod: ``[B, C]`` demodulation factors. noise: ``[1 or B, 1, H, W]``.
        noise_weight: ``[1]`` (a tensor, read on the device: no host sync).
        bias: ``[C]`` (any shape with ``C`` elements).
    Returns:
        ``[B, C, H, W]`` in ``y``'s layout and dtype.
    """
    x, _ = conv_epilogue_modulated(y, demod, noise, noise_weight, bias, up, None, True, impl)
    return x


def conv_epilogue_modulated(y: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor, noise_weight: torch.Tensor,
                            bias: torch.Tensor, up: bool, next_style: torch.Tensor | None, write_x: bool,
                            impl: str = "auto") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The epilogue that also writes the next conv's modulated input ``x * next_style[b, c]``.

    Returns ``(x or None, x_mod or None)``: ``x`` when ``write_x`` (a ToRGB or the caller
    reads the features), ``x_mod`` when ``next_style`` is given, rounded once from the
    fp32 value (one rounding fewer than modulating the stored ``x``).
    """
    if not write_x and next_style is None:
        raise ValueError("conv_epilogue_modulated needs write_x or next_style: it would write nothing")
    if not use_triton(impl, y, demod, noise, noise_weight, bias):
        x = conv_epilogue_ref(y, demod, noise, noise_weight, bias, up)
        return (x if write_x else None), (None if next_style is None else modulate_ref(x, next_style))
    B, C, Hy, Wy = y.shape
    H, W = (Hy - 1, Wy - 1) if up else (Hy, Wy)
    out = empty_map((B, C, H, W), y) if write_x else None
    out_mod = empty_map((B, C, H, W), y) if next_style is not None else None
    first = out if out is not None else out_mod
    noise_strides = (noise.stride(0) if noise.shape[0] > 1 else 0, noise.stride(2), noise.stride(3))
    args = (y, demod.contiguous(), noise, noise_weight, bias.reshape(-1),
            first if next_style is None else next_style.contiguous(), first, first if out_mod is None else out_mod,
            *y.stride(), *noise_strides, *first.stride(), *(first if out_mod is None else out_mod).stride(), Hy, Wy)
    plain, upsampling = _kernels()
    flags = {"WRITE_X": write_x, "WRITE_MOD": next_style is not None}
    if not up:
        launch(plain, first.shape, is_channels_last(first), args, **flags)
        return out, out_mod
    rows = B * (H // 2) * (W // 2)
    br, bi = tile_shape(rows, C, tile=UP_TILE)
    run(upsampling, ((rows + br - 1) // br, (C + bi - 1) // bi), args, B, C, H // 2, W // 2, **flags, BR=br, BI=bi)
    return out, out_mod
