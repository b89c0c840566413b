"""Triton kernels of the fused 3x3 styled conv (``conv3x3.py``): an implicit GEMM whose epilogue is the layer's.

A program computes a ``[BM pixels, BN output channels]`` tile of the conv as a GEMM over
``K = 9 taps x I inputs``: each step loads a ``[BM, BK]`` slice of the modulated input at one
tap's offset (borders masked to zero: the conv's padding) and the matching ``[BK, BN]`` slice
of the weight (read through its strides: the fast path keeps it channels_last, ``[O, 3, 3, I]``
in memory, so a slice's inputs are contiguous), and accumulates with ``tl.dot`` in fp32. With one split the program
then applies the styled conv's epilogue (``conv_epilogue_kernel._finish``) to the
accumulator, so the conv output never reaches memory. Where the output tiles are too few to
fill the card (small maps at small batches) the K steps are split over ``SPLIT`` programs
per tile, each storing an fp32 partial; one more launch sums the partials in a fixed order
(deterministic, unlike atomics) and applies the epilogue.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

from ._dispatch import interpreting
from ._tiles import cdiv, direct, tile_grid
from .conv_epilogue_kernel import EpilogueArgs, _finish
from .tiles_kernel import tile_index

SPLIT_TARGET = 2  # programs per streaming multiprocessor a split launch aims for
MAX_SPLIT = 32
MIN_STEPS_PER_SPLIT = 3  # K steps a split program accumulates at least (fewer: the partials' traffic dominates)
INTERPRETER_SMS = 132  # the split choice off the GPU (TRITON_INTERPRET=1): an H100's count, so tests take its path


@triton.jit
def _accumulate(x, wt, b, h, w, row_ok, cols, col_ok, first, last, sxb, sxc, sxh, sxw, swo, swi, swh, sww, I, H, W,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr):
    """The sum over K steps ``first .. last - 1`` (step = tap * chunks + chunk) of one tile, fp32."""
    ks = tl.arange(0, BK)
    chunks = tl.cdiv(I, BK)
    base = x + b.to(tl.int64) * sxb
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for step in range(first, last):
        tap = step // chunks
        ci = (step - tap * chunks) * BK + ks
        ky = tap // 3
        kx = tap - 3 * ky
        hh = h + (ky - 1)
        ww = w + (kx - 1)
        pixel_ok = row_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        a = tl.load(base[:, None] + (hh * sxh + ww * sxw)[:, None] + ci[None, :] * sxc,
                    mask=pixel_ok[:, None] & (ci < I)[None, :], other=0.0)
        bt = tl.load(wt + ky * swh + kx * sww + ci[:, None] * swi + cols[None, :] * swo,
                     mask=(ci < I)[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            bt = bt.to(tl.float32)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)
    return acc


@triton.jit
def conv3x3_kernel(x, wt, partials, demod, noise, noise_weight, bias, next_style, out, out_mod,
                   sxb, sxc, sxh, sxw, swo, swi, swh, sww,
                   sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc,
                   B, I, O, H, W, STEPS_PER_SPLIT,
                   SPLIT: tl.constexpr, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr, PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    w = rows % W
    h = (rows // W) % H
    b = rows // (W * H)
    row_ok = b < B
    col_ok = cols < O
    first = tl.program_id(2) * STEPS_PER_SPLIT
    last = tl.minimum(first + STEPS_PER_SPLIT, 9 * tl.cdiv(I, BK))
    acc = _accumulate(x, wt, b, h, w, row_ok, cols, col_ok, first, last, sxb, sxc, sxh, sxw, swo, swi, swh, sww,
                      I, H, W, PRECISION, UPCAST, BM, BN, BK)
    ok = row_ok[:, None] & col_ok[None, :]
    if SPLIT == 1:
        _finish(acc, b[:, None], cols[None, :], h[:, None], w[:, None], ok, demod, noise, noise_weight, bias,
                next_style, out, out_mod, sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc,
                O, WRITE_X, WRITE_MOD)
    else:
        M = B * H * W
        at = tl.program_id(2).to(tl.int64) * M * O + rows.to(tl.int64)[:, None] * O + cols[None, :]
        tl.store(partials + at, acc, mask=ok)


@triton.jit
def split_finish_kernel(partials, demod, noise, noise_weight, bias, next_style, out, out_mod,
                        sdb, sdc, snb, snh, snw, sob, soc, soh, sow, smb, smc, smh, smw, stb, stc,
                        B, O, H, W, SPLIT: tl.constexpr, WRITE_X: tl.constexpr, WRITE_MOD: tl.constexpr,
                        BR: tl.constexpr, BI: tl.constexpr):
    """The split partials summed in split order, then the epilogue (tiles over ``[B, O, H, W]``, channels inner)."""
    b, c, h, w, ok = tile_index(B, O, H, W, True, BR, BI)
    at = ((b.to(tl.int64) * H + h) * W + w) * O + c
    M = B * H * W
    v = tl.zeros(ok.shape, dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        v += tl.load(partials + s * M * O + at, mask=ok, other=0.0)
    _finish(v, b, c, h, w, ok, demod, noise, noise_weight, bias, next_style, out, out_mod, sdb, sdc, snb, snh, snw,
            sob, soc, soh, sow, smb, smc, smh, smw, stb, stc, O, WRITE_X, WRITE_MOD)


def _pow2_at_least(n: int, low: int) -> int:
    return max(low, 1 << max(n - 1, 0).bit_length())


def tiles(pixels: int, inputs: int, outputs: int) -> tuple[int, int, int]:
    """``(BM, BN, BK)``: 128-wide pixel and channel tiles where the layer is that large, 16 at least (``tl.dot``)."""
    return min(_pow2_at_least(pixels, 16), 128), min(_pow2_at_least(outputs, 16), 128), \
        min(_pow2_at_least(inputs, 16), 64)


def split_count(output_tiles: int, steps: int, device: torch.device) -> int:
    """How many programs share a tile's K steps: enough tiles for ``SPLIT_TARGET`` per multiprocessor, each
    program keeping at least ``MIN_STEPS_PER_SPLIT`` steps."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
        else INTERPRETER_SMS
    wanted = cdiv(SPLIT_TARGET * sms, output_tiles)
    return max(1, min(wanted, MAX_SPLIT, steps // MIN_STEPS_PER_SPLIT))


@dataclass(frozen=True)
class Launch:
    """A launch of ``conv3x3_kernel``: its blocks, programs per output tile and K steps per program, warps, stages."""

    blocks: tuple[int, int, int]
    split: int
    per_split: int
    warps: int
    stages: int = 3


def launch(x_mod: torch.Tensor, out_channels: int, split: int | None = None,
           blocks: tuple[int, int, int] | None = None, warps: int | None = None, stages: int = 3) -> Launch:
    """The launch for ``x_mod [B, I, H, W]``: ``tiles`` and ``split_count`` choose what the arguments leave open."""
    B, I, H, W = x_mod.shape
    bm, bn, bk = blocks or tiles(B * H * W, I, out_channels)
    steps = 9 * cdiv(I, bk)
    output_tiles = cdiv(B * H * W, bm) * cdiv(out_channels, bn)
    per_split = cdiv(steps, split_count(output_tiles, steps, x_mod.device) if split is None else split)
    return Launch((bm, bn, bk), cdiv(steps, per_split), per_split,  # no program without a K step
                  warps or (8 if bm * bn >= 128 * 128 else 4), stages)


def conv3x3_epilogue(x_mod: torch.Tensor, weight: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                     noise_weight: torch.Tensor, bias: torch.Tensor, next_style: torch.Tensor | None, write_x: bool,
                     plan: Launch | None = None,
                     wrap: Callable = direct) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(x or None, x_mod of the next conv or None)``, each ``[B, O, H, W]`` in ``x_mod``'s layout (``conv3x3.py``;
    ``weight [O, I, 3, 3]`` in any layout, channels_last for coalesced loads). ``plan``: ``launch(x_mod, O)`` unless
    given (tests and ``bench/conv_tiles.py`` fix it)."""
    B, I, H, W = x_mod.shape
    O = weight.shape[0]
    plan = plan or launch(x_mod, O)
    e = EpilogueArgs.make((B, O, H, W), x_mod, demod, noise, noise_weight, bias, next_style, write_x)
    bm, bn, bk = plan.blocks
    split = plan.split
    partials = torch.empty((split, B * H * W, O), dtype=torch.float32, device=x_mod.device) if split > 1 \
        else e.tensors[5]  # unused
    # Triton's interpreter multiplies bf16 operands wrongly (3.9: garbage from tl.dot): there they go in as fp32,
    # which the bf16 products equal exactly
    upcast = interpreting() and x_mod.dtype == torch.bfloat16
    precision = "ieee" if x_mod.dtype == torch.float32 or upcast else "tf32"  # fp32 operands: exact, no TF32
    wrap(conv3x3_kernel)[(cdiv(B * H * W, bm), cdiv(O, bn), split)](
        x_mod, weight, partials, *e.tensors, *x_mod.stride(), *weight.stride(), *e.strides, B, I, O, H, W,
        plan.per_split, SPLIT=split, **e.flags, PRECISION=precision, UPCAST=upcast, BM=bm, BN=bn, BK=bk,
        num_warps=plan.warps, num_stages=plan.stages, enable_fp_fusion=False)
    if split > 1:
        grid, br, bi = tile_grid((B, O, H, W), True)
        wrap(split_finish_kernel)[grid](partials, *e.tensors, *e.strides, B, O, H, W, SPLIT=split, **e.flags,
                                        BR=br, BI=bi, enable_fp_fusion=False)
    return e.out, e.out_mod
