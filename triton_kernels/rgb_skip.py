"""ToRGB epilogue: ``out = y + bias[c] + up(skip)``, the RGB skip upsampled on the fly.

``up`` is the reference's ``upfirdn2d(skip, outer(k, k) / 16, up=2, pad=(2, 1))`` with
``k = [1, 3, 3, 1]``: per axis, output ``2n`` is ``(skip[n - 1] + 3 skip[n]) / 4`` and
output ``2n + 1`` is ``(3 skip[n] + skip[n + 1]) / 4`` (zero outside the map). torch runs
it as a depthwise transposed conv (a slow cuDNN kernel on 3 channels) and two adds; the
kernel reads ``y`` and four skip taps per pixel (from cache) and writes once.
"""

from __future__ import annotations

import functools

import torch

from ..runtime.layers import BLUR_KERNEL, upfirdn2d
from ._dispatch import use_triton
from ._tiles import empty_map, is_channels_last, jit, launch

tl = tile_index = offset = None  # bound by _tiles.jit when the kernel is first built


def rgb_skip_ref(y: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return y + bias.view(1, -1, 1, 1) + upfirdn2d(skip, BLUR_KERNEL.to(skip.device, skip.dtype), up=2, pad=(2, 1))


def _rgb_skip_kernel(y, bias, skip, out, syb, syc, syh, syw, ssb, ssc, ssh, ssw, sob, soc, soh, sow, Hs, Ws,
                     B, C, H, W, CL: tl.constexpr, BR: tl.constexpr, BI: tl.constexpr):
    b, c, h, w, ok = tile_index(B, C, H, W, CL, BR, BI)
    r0 = (h + 1) // 2 - 1  # the two skip rows under output row h (h + 1 >= 1: no negative division)
    c0 = (w + 1) // 2 - 1
    wr = 0.25 + 0.5 * (h % 2).to(tl.float32)  # weight of row r0; r0 + 1 gets 1 - wr
    wc = 0.25 + 0.5 * (w % 2).to(tl.float32)
    plane = skip + offset(b, c, 0, 0, ssb, ssc, ssh, ssw)
    up = tl.zeros([BR, BI], dtype=tl.float32)
    for i in tl.static_range(2):
        r = r0 + i
        row_w = wr if i == 0 else 1.0 - wr
        for j in tl.static_range(2):
            q = c0 + j
            col_w = wc if j == 0 else 1.0 - wc
            m = ok & (r >= 0) & (r < Hs) & (q >= 0) & (q < Ws)
            up += row_w * col_w * tl.load(plane + r * ssh + q * ssw, mask=m, other=0.0).to(tl.float32)
    v = tl.load(y + offset(b, c, h, w, syb, syc, syh, syw), mask=ok).to(tl.float32)
    v = v + tl.load(bias + c, mask=c < C).to(tl.float32) + up
    tl.store(out + offset(b, c, h, w, sob, soc, soh, sow), v.to(out.dtype.element_ty), mask=ok)


@functools.cache
def _kernel():
    return jit(_rgb_skip_kernel)


def rgb_skip(y: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """``y [B, 3, H, W] + bias [3] + up(skip [B, 3, H/2, W/2])`` (the runtime's own call); ``y``'s layout."""
    if not use_triton(impl, y, bias, skip):
        return rgb_skip_ref(y, bias, skip)
    out = empty_map(y.shape, y)
    args = (y, bias.reshape(-1), skip, out, *y.stride(), *skip.stride(), *out.stride(), *skip.shape[-2:])
    launch(_kernel(), y.shape, is_channels_last(out), args)
    return out
