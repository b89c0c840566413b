"""Triton kernel of ToRGB (``to_rgb.py``): the modulated 1x1 conv, bias and upsampled skip in one pass."""

from typing import Callable

import torch
import triton
import triton.language as tl

from ._tiles import direct

# x elements per program, a [pixels, channels] tile: whole channel rows up to MAX_ROW channels, so that at
# batch 1 the small maps get HW * I / TILE programs (a 64 px map of 512 channels 512, not 64 each looping
# over 8 channel steps) and every program loads its x in one step
TILE, MAX_ROW = 4096, 512
# Whole-channel-row tiles (``tile``) fill the card where a batch is small; beyond that a fixed 128-pixel x 64-channel
# tile, looping over the channels, is faster. H100, fp16, the chain's 7 ToRGBs of 256 px (bench/NOTES.md, round 11):
# whole rows 62 / 87 / 132 / 219 us at batch 1 / 2 / 4 / 8 and 2.86 ms at 128; the 128 x 64 tile 93 / 104 / 130 / 176
# us and 1.61 ms, the best of eight fixed tiles from batch 4 up (round 1's 64 x 64: 96 / 111 / 138 / 195 us, 1.83 ms).
# The two cross between batches 2 and 4 (batch 3 is not measured).
WHOLE_ROW_MAX_BATCH = 3
LARGE_BATCH_TILE = (128, 64)


@triton.jit
def to_rgb_kernel(x, style, weight, bias, skip, out, sxb, sxc, sxh, sxw, stb, sti, ssb, ssc, ssh, ssw,
                  sob, soc, soh, sow,
                  I, H, W, Hs, Ws, HAS_SKIP: tl.constexpr, BP: tl.constexpr, BI: tl.constexpr):
    b = tl.program_id(1)  # batch on axis 1 (at most 65535), pixels on axis 0 (no such limit)
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    ok = p < H * W
    h = p // W
    w = p % W
    pix = x + b.to(tl.int64) * sxb + h * sxh + w * sxw  # [BP]
    acc0 = tl.zeros([BP], dtype=tl.float32)
    acc1 = tl.zeros([BP], dtype=tl.float32)
    acc2 = tl.zeros([BP], dtype=tl.float32)
    for start in range(0, I, BI):
        i = start + tl.arange(0, BI)
        i_ok = i < I
        v = tl.load(pix[:, None] + i[None, :] * sxc, mask=ok[:, None] & i_ok[None, :], other=0.0).to(tl.float32)
        s = tl.load(style + b * stb + i * sti, mask=i_ok, other=0.0).to(tl.float32)
        acc0 += tl.sum(v * (tl.load(weight + i, mask=i_ok, other=0.0).to(tl.float32) * s)[None, :], axis=1)
        acc1 += tl.sum(v * (tl.load(weight + I + i, mask=i_ok, other=0.0).to(tl.float32) * s)[None, :], axis=1)
        acc2 += tl.sum(v * (tl.load(weight + 2 * I + i, mask=i_ok, other=0.0).to(tl.float32) * s)[None, :], axis=1)
    for c in tl.static_range(3):
        if c == 0:
            v = acc0
        elif c == 1:
            v = acc1
        else:
            v = acc2
        v += tl.load(bias + c).to(tl.float32)
        if HAS_SKIP:
            plane = skip + b.to(tl.int64) * ssb + c * ssc
            r0 = (h + 1) // 2 - 1  # the skip rows/cols under h, w (h + 1 >= 1: no negative division)
            q0 = (w + 1) // 2 - 1
            wr = 0.25 + 0.5 * (h % 2).to(tl.float32)  # weight of r0; r0 + 1 gets 1 - wr
            wc = 0.25 + 0.5 * (w % 2).to(tl.float32)
            for i in tl.static_range(2):
                r = r0 + i
                row_w = wr if i == 0 else 1.0 - wr
                for j in tl.static_range(2):
                    q = q0 + j
                    col_w = wc if j == 0 else 1.0 - wc
                    m = ok & (r >= 0) & (r < Hs) & (q >= 0) & (q < Ws)
                    v += row_w * col_w * tl.load(plane + r * ssh + q * ssw, mask=m, other=0.0).to(tl.float32)
        tl.store(out + b.to(tl.int64) * sob + c * soc + h * soh + w * sow, v.to(out.dtype.element_ty), mask=ok)


def to_rgb(x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           skip: torch.Tensor | None, wrap: Callable = direct, blocks: tuple[int, int] | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB (contiguous) from ``x [B, I, H, W]``, ``style [B, I]`` (any strides), ``weight [3, I]``,
    ``bias [3]`` and ``skip [B, 3, H/2, W/2]`` or None (``wrap``: ``_tiles.direct``; ``blocks``: the tile,
    ``(pixels, channels)`` powers of two, default ``batch_tile``; bench/kernels.py times both tiles)."""
    batch, inputs, height, width = x.shape
    out = torch.empty(batch, 3, height, width, dtype=x.dtype, device=x.device)
    skip_arg = out if skip is None else skip  # unread without a skip: any valid pointer
    block_p, block_i = blocks or batch_tile(batch, inputs)
    grid = (triton.cdiv(height * width, block_p), batch)
    wrap(to_rgb_kernel)[grid](x, style, weight.contiguous(), bias.reshape(-1), skip_arg, out,
                              *x.stride(), *style.stride(), *skip_arg.stride(), *out.stride(), inputs, height, width,
                              *skip_arg.shape[-2:], HAS_SKIP=skip is not None, BP=block_p, BI=block_i,
                              enable_fp_fusion=False)
    return out


def batch_tile(batch, inputs: int) -> tuple[int, int]:
    """The tile for a launch of ``batch`` samples: whole channel rows up to ``WHOLE_ROW_MAX_BATCH``, else
    ``LARGE_BATCH_TILE``, which a traced launch (AOTInductor packages: ``batch`` symbolic, one kernel for every batch)
    takes too: it is within 31 us of whole rows at batch 1 (round 11)."""
    return tile(inputs) if isinstance(batch, int) and batch <= WHOLE_ROW_MAX_BATCH else LARGE_BATCH_TILE


def tile(inputs: int) -> tuple[int, int]:
    """``(pixels, channels)`` of a program's tile for ``inputs`` channels (a traced launch has them static)."""
    block_i = min(triton.next_power_of_2(max(inputs, 1)), MAX_ROW)
    return TILE // block_i, block_i
