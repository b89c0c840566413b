"""Triton feature-op kernels against their torch references.

The tensors live on ``DEVICE`` (conftest): on a GPU machine the kernels compile and run on
CUDA tensors (slow the first time: several hundred kernel variants get compiled); elsewhere
conftest sets ``TRITON_INTERPRET=1`` and they run on CPU tensors in Triton's interpreter (CI).

Tolerances: the styled-conv epilogue (fp32 in the kernel, one rounding) against its fp32
reference: fp32 ``rtol=atol=1e-5``, fp16/bf16 ``atol = eps * max|ref|`` (one rounding of the
output, plus the inputs' exact upcast). Modulation (one product) is bit-exact. Copies (widen, region copy, concat, column placement, shift outside its
targets or at strength 1, mask lerp with ``zero``) must be bit-exact. Lerps: fp32
``rtol=atol=1e-6``; fp16 and bf16 ``atol = 2 eps * max|input|`` (the kernel rounds once
from fp32, the reference after each of its three tensor ops: up to about 3 half-ulps
of the largest term).
"""

import subprocess
import sys

import pytest
import torch

from conftest import DEVICE
from soat.errors import SoatError
from soat.triton_kernels._dispatch import kernels, use_triton
from soat.triton_kernels.columns import place_columns_ref
from soat.triton_kernels.conv_epilogue import conv_epilogue, conv_epilogue_modulated, conv_epilogue_ref
from soat.triton_kernels.demod import DemodTable, demod_layers, demod_ref
from soat.triton_kernels.mask_lerp import mask_lerp_ref
from soat.triton_kernels.modulate import modulate, modulate_ref
from soat.triton_kernels.ops import (WIDEN_MODES, concat_w, mask_lerp, place_columns, ramp, ramp_lerp, region_copy,
                                     shift_lerp, widen)
from soat.triton_kernels.ramp_lerp import ramp_lerp_ref
from soat.triton_kernels.region_copy import region_copy_ref
from soat.triton_kernels.shift_lerp import shift_lerp_ref
from soat.triton_kernels.to_rgb import to_rgb, to_rgb_ref
from soat.triton_kernels.widen import widen_ref

pytest.importorskip("triton", reason="the kernel tests need the triton package (pip install 'soat[test]')")

# [B, C, H, W]: B in {1, 3}, ragged C, odd and even sizes; 16x16 at B=3 spans several programs
GEOMS = [(1, 3, 5, 7), (3, 5, 5, 7), (1, 5, 9, 13), (3, 3, 9, 13), (3, 5, 16, 16), (1, 3, 16, 16)]
FORMATS = [(dt, cl) for dt in (torch.float32, torch.float16, torch.bfloat16) for cl in (False, True)]
# The fast tier runs each geometry in one format and each format in one geometry (the diagonal); --full all pairs.
CASES = [pytest.param(g, dt, cl, id=f"{'x'.join(map(str, g))}-{str(dt)[6:]}{'-cl' if cl else ''}",
                      marks=() if j == i % len(FORMATS) else pytest.mark.full)
         for i, g in enumerate(GEOMS) for j, (dt, cl) in enumerate(FORMATS)]


pytestmark = pytest.mark.usefixtures("exact_fp32")  # true fp32 references on CUDA (conftest)


def maps(n, shape, dtype=torch.float32, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.randn(shape, generator=g).to(DEVICE, dtype, memory_format=fmt) for _ in range(n)]


def style_rows(batch, channels, dtype, g):
    """``[batch, channels]`` styles as a column slice of a wider buffer (a style list from a flat tensor, and the
    paired runs of blend-type tasks, pass such views: the kernels read them through their strides)."""
    return torch.randn(batch, channels + 5, generator=g).to(DEVICE, dtype)[:, 3:3 + channels]


def assert_lerp(out, ref, *inputs):
    if ref.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    else:
        scale = max(t.abs().max().item() for t in inputs)
        torch.testing.assert_close(out, ref, rtol=0, atol=2 * torch.finfo(ref.dtype).eps * scale)


def assert_layout(out, like):
    if like.shape[1] > 1 and like.shape[2] * like.shape[3] > 1:
        fmt = torch.channels_last if not like.is_contiguous() else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("pad", [True, False])
def test_ramp_matches_linspace(pad):
    for n in [*range(1, 20), 64, 255, 300, 1024, 2048]:
        zeros, ones = torch.zeros(1, 1, 1, n, device=DEVICE), torch.ones(1, 1, 1, n, device=DEVICE)
        alpha = ramp_lerp(zeros, ones, 3, pad, impl="triton")  # (1 - a) * 0 + a * 1 == a
        torch.testing.assert_close(alpha[0, 0, 0].cpu(), ramp(n, pad), rtol=1e-6, atol=0)
        down = ramp_lerp(zeros.view(1, 1, n, 1), ones.view(1, 1, n, 1), 2, pad, impl="triton")
        torch.testing.assert_close(down[0, 0, :, 0].cpu(), ramp(n, pad), rtol=1e-6, atol=0)


@pytest.mark.parametrize("axis,pad", [(3, True), (2, True), (3, False), (2, False)])
@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_ramp_lerp(shape, dtype, cl, axis, pad):
    x1, x2 = maps(2, shape, dtype, cl)
    out = ramp_lerp(x1, x2, axis, pad, impl="triton")
    assert_lerp(out, ramp_lerp_ref(x1, x2, axis, pad), x1, x2)
    assert_layout(out, x1)


# (mask batch: 1 or B, mask size): full resolution, larger odd, smaller, a scalar alpha
MASKS = [(1, None), ("B", (37, 23)), (1, (3, 4)), ("B", (1, 1))]


@pytest.mark.parametrize("mask_batch,mask_size", MASKS)
@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_mask_lerp(shape, dtype, cl, mask_batch, mask_size):
    x1, x2 = maps(2, shape, dtype, cl)
    b, _, h, w = shape
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(b if mask_batch == "B" else 1, 1, *(mask_size or (h, w)), generator=g).to(DEVICE)
    assert_lerp(mask_lerp(x1, x2, mask, impl="triton"), mask_lerp_ref(x1, x2, mask), x1, x2)


@pytest.mark.parametrize("shape,dtype,cl", CASES[::5])
def test_mask_lerp_zero_is_x1(shape, dtype, cl):
    x1, x2 = maps(2, shape, dtype, cl)
    mask = torch.rand(1, 1, 11, 9, device=DEVICE)
    out = mask_lerp(x1, x2, mask, zero=True, impl="triton")
    assert torch.equal(out, x1) and torch.equal(out, mask_lerp_ref(x1, x2, mask, zero=True))


def test_lerps_read_strided_inputs():
    x1, x2 = maps(2, (3, 5, 9, 15))
    a, b = x1[..., 2:], x2.transpose(2, 3).contiguous().transpose(2, 3)[..., :-2]  # a slice; a transposed copy
    assert_lerp(ramp_lerp(a, b, 3, impl="triton"), ramp_lerp_ref(a, b, 3), a, b)
    mask = torch.rand(1, 1, 8, 26, device=DEVICE)[..., ::2]  # a strided mask
    assert_lerp(mask_lerp(a, b, mask, impl="triton"), mask_lerp_ref(a, b, mask), a, b)


# overlapping targets (later wins), a source overlapping its target, negative shifts
MOVES = [(1, 2, 2, 3, 1, 2), (0, 0, 2, 2, -2, -1), (2, 3, 2, 2, 1, 1)]


@pytest.mark.parametrize("strength", [1.0, 0.3])
@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_shift_lerp(shape, dtype, cl, strength):
    (f,) = maps(1, shape, dtype, cl)
    out = shift_lerp(f, MOVES, strength, impl="triton")
    ref = shift_lerp_ref(f, MOVES, strength)
    if strength == 1.0:
        assert torch.equal(out, ref)
    else:
        assert_lerp(out, ref, f)
    assert torch.equal(out[..., 4:, :], f[..., 4:, :])  # untouched outside the targets
    assert_layout(out, f)


@pytest.mark.parametrize("mode", WIDEN_MODES)
@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_widen(shape, dtype, cl, mode):
    x, skip = maps(1, shape, dtype, cl)[0], maps(1, (shape[0], 3, *shape[2:]), dtype, seed=1)[0]
    out_x, out_skip = widen(x, skip, mode, impl="triton")
    ref_x, ref_skip = widen_ref(x, skip, mode)
    assert torch.equal(out_x, ref_x) and torch.equal(out_skip, ref_skip)
    assert_layout(out_x, x)


# a swap of overlapping rectangles and a later copy over both
COPIES = [(0, 0, 2, 3, 3, 3), (2, 3, 0, 0, 3, 3), (1, 2, 0, 0, 3, 4)]


@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_region_copy(shape, dtype, cl):
    dst, src = maps(2, shape, dtype, cl)
    out = region_copy(dst, src, COPIES, impl="triton")
    assert torch.equal(out, region_copy_ref(dst, src, COPIES))
    assert_layout(out, dst)


@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_concat_w(shape, dtype, cl):
    x1 = maps(1, shape, dtype, cl)[0]
    x2 = maps(1, (*shape[:3], 4), dtype, cl, seed=1)[0]
    assert torch.equal(concat_w(x1, x2, impl="triton"), torch.cat([x1, x2], 3))


@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_place_columns(shape, dtype, cl):
    fmt = torch.channels_last if cl else torch.contiguous_format
    out = torch.zeros(*shape[:3], 20, device=DEVICE, dtype=dtype).to(memory_format=fmt)
    expected = out.clone()
    span = maps(1, (*shape[:3], 12), dtype, cl)[0][..., 2:]  # a column slice, as panorama passes it
    assert place_columns(out, span, 5, 1, 7, impl="triton") is out
    assert torch.equal(out, place_columns_ref(expected, span, 5, 1, 7))


@pytest.mark.parametrize("up", [False, True], ids=["conv", "up"])
@pytest.mark.parametrize("noise_batch", [1, "B"])
@pytest.mark.parametrize("shape,dtype,cl", CASES[::2] + CASES[1::6])
def test_conv_epilogue(shape, dtype, cl, noise_batch, up):
    b, c, h, w = shape  # y's shape; an upsampling layer's y is the transposed conv's 2H + 1 rows of H inputs
    (y,) = maps(1, (b, c, 2 * h + 1, 2 * w + 1) if up else shape, dtype, cl)
    h, w = (2 * h, 2 * w) if up else (h, w)
    g = torch.Generator().manual_seed(2)
    # a column slice of a wider buffer, as the fast path passes its factors (demod_layers)
    demod = (torch.rand(b, c + 5, generator=g) + 0.5).to(DEVICE, dtype)[:, 2:2 + c]
    noise = torch.randn(b if noise_batch == "B" else 1, 1, h, w, generator=g).to(DEVICE, dtype)
    noise_weight = torch.tensor([0.3], device=DEVICE, dtype=dtype)
    bias = torch.randn(c, generator=g).to(DEVICE, dtype)
    out = conv_epilogue(y, demod, noise, noise_weight, bias, up, impl="triton")
    ref = conv_epilogue_ref(*(t.float() for t in (y, demod, noise, noise_weight, bias)), up)
    assert out.dtype == dtype and out.shape == (b, c, h, w)
    assert_layout(out, y)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out.float(), ref, rtol=0, atol=torch.finfo(dtype).eps * ref.abs().max().item())


@pytest.mark.parametrize("write_x", [True, False])
@pytest.mark.parametrize("shape,dtype,cl", CASES[::4])
def test_conv_epilogue_writes_next_modulated_input(shape, dtype, cl, write_x):
    b, c, h, w = shape
    (y,) = maps(1, shape, dtype, cl)
    g = torch.Generator().manual_seed(6)
    demod, next_style = (torch.rand(b, c, generator=g) + 0.5).to(DEVICE, dtype), style_rows(b, c, dtype, g)
    noise = torch.randn(1, 1, h, w, generator=g).to(DEVICE, dtype)
    noise_weight, bias = torch.tensor([0.3], device=DEVICE, dtype=dtype), torch.randn(c, generator=g).to(DEVICE, dtype)
    x, x_mod = conv_epilogue_modulated(y, demod, noise, noise_weight, bias, False, next_style, write_x, impl="triton")
    ref = conv_epilogue_ref(*(t.float() for t in (y, demod, noise, noise_weight, bias)), False)
    assert (x is not None) == write_x
    tol = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    if write_x:
        torch.testing.assert_close(x.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    ref_mod = modulate_ref(ref, next_style.float())
    assert_layout(x_mod, y)
    torch.testing.assert_close(x_mod.float(), ref_mod, rtol=tol, atol=tol * ref_mod.abs().max().item())


def assert_demod(out, style, weight_sq):
    ref = demod_ref(style.float(), weight_sq.float())
    assert out.dtype == style.dtype and out.shape == ref.shape
    rtol = 1e-5 if style.dtype == torch.float32 else torch.finfo(style.dtype).eps
    torch.testing.assert_close(out.float(), ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,inputs,outputs", [(1, 3, 5), (3, 70, 130), (2, 512, 64)])
def test_demod(batch, inputs, outputs, dtype):
    """The one-layer kernel of the AOTI packages' graphs."""
    g = torch.Generator().manual_seed(5)
    style = torch.randn(batch, inputs, generator=g).to(DEVICE, dtype)
    weight_sq = (torch.rand(inputs, outputs, generator=g) / inputs).to(DEVICE, dtype)
    assert_demod(kernels("demod").demod(style, weight_sq), style, weight_sq)


# (inputs, outputs) per layer: outputs off and on multiples of the kernel's 8-output blocks, the widest input 512
DEMOD_LAYERS = [(3, 5), (70, 130), (512, 64), (9, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3])
def test_demod_layers(batch, dtype):
    """Every layer of a run in one launch (the fast path): the whole table and runs inside it."""
    g = torch.Generator().manual_seed(8)
    weight_sq = [(torch.rand(i, o, generator=g) / i).to(DEVICE, dtype) for i, o in DEMOD_LAYERS]
    styles = [style_rows(batch, i, dtype, g) for i, _ in DEMOD_LAYERS]
    table = DemodTable(weight_sq)
    assert all(torch.equal(table.weight_sq(k), w) for k, w in enumerate(weight_sq))
    for first, last in ((0, 4), (1, 3), (3, 4)):
        out = demod_layers(styles[first:last], table, first, impl="triton")
        assert len(out) == last - first
        for d, style, w in zip(out, styles[first:last], weight_sq[first:last]):
            assert_demod(d, style, w)


# x [B, I, H, W]: even sizes (a skip of half the size feeds them); 70 channels make a ragged tile row, 520 two
# channel steps of the 512-channel rows
RGB_GEOMS = [(1, 3, 6, 8), (3, 5, 10, 14), (2, 70, 8, 6), (1, 3, 16, 16), (1, 520, 4, 6)]


def rgb_inputs(shape, dtype, cl, with_skip):
    b, c, h, w = shape
    (x,) = maps(1, shape, dtype, cl)
    g = torch.Generator().manual_seed(7)
    style, weight = style_rows(b, c, dtype, g), torch.randn(3, c, generator=g).to(DEVICE, dtype)
    bias = torch.randn(3, generator=g).to(DEVICE, dtype)
    skip = torch.randn(b, 3, h // 2, w // 2, generator=g).to(DEVICE, dtype) if with_skip else None
    return x, style, weight, bias, skip


def assert_rgb(out, x, style, weight, bias, skip):
    ref = to_rgb_ref(*(t.float() for t in (x, style, weight, bias)), None if skip is None else skip.float())
    assert out.dtype == x.dtype and out.shape == ref.shape
    tol = 1e-5 if x.dtype == torch.float32 else 2 * torch.finfo(x.dtype).eps
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("with_skip", [True, False])
@pytest.mark.parametrize("dtype,cl", FORMATS)
@pytest.mark.parametrize("shape", RGB_GEOMS)
def test_to_rgb(shape, dtype, cl, with_skip):
    inputs = rgb_inputs(shape, dtype, cl, with_skip)
    assert_rgb(to_rgb(*inputs, impl="triton"), *inputs)


@pytest.mark.parametrize("shape", RGB_GEOMS[1:3])
def test_to_rgb_large_batch_tile(shape):
    """The 128-pixel, 64-channel tile of large batches and traced launches (a channel loop of two steps)."""
    inputs = rgb_inputs(shape, torch.float32, True, True)
    assert_rgb(kernels("to_rgb").to_rgb(*inputs, blocks=kernels("to_rgb").LARGE_BATCH_TILE), *inputs)


def test_to_rgb_takes_the_large_batch_tile_beyond_small_batches():
    """Whole channel rows up to WHOLE_ROW_MAX_BATCH, the large-batch tile beyond it and in traced (symbolic)
    launches."""
    module = kernels("to_rgb")
    limit = module.WHOLE_ROW_MAX_BATCH
    assert module.batch_tile(limit, 128) == module.tile(128) != module.LARGE_BATCH_TILE
    assert module.batch_tile(limit + 1, 128) == module.batch_tile(torch.SymInt, 128) == module.LARGE_BATCH_TILE
    inputs = rgb_inputs((limit + 1, 96, 8, 8), torch.float32, True, True)
    assert_rgb(to_rgb(*inputs, impl="triton"), *inputs)


@pytest.mark.parametrize("shape,dtype,cl", CASES)
def test_modulate(shape, dtype, cl):
    (x,) = maps(1, shape, dtype, cl)
    style = style_rows(*shape[:2], dtype, torch.Generator().manual_seed(4))
    out = modulate(x, style, impl="triton")
    if dtype == torch.bfloat16:  # the interpreter's fp32 -> bf16 cast may round differently: one ulp
        torch.testing.assert_close(out, modulate_ref(x, style), rtol=torch.finfo(dtype).eps, atol=0)
    else:
        assert torch.equal(out, modulate_ref(x, style))
    assert_layout(out, x)


def test_empty_move_and_copy_lists_copy_the_input():
    f, g = maps(2, (1, 3, 5, 7))
    assert torch.equal(shift_lerp(f, [], 0.5, impl="triton"), f)
    assert torch.equal(region_copy(f, g, [], impl="triton"), f)


def bad_calls():
    x, y = maps(2, (1, 3, 5, 7))
    return [
        lambda: ramp_lerp(x, y[..., :3], 3),
        lambda: ramp_lerp(x, y.half(), 3),
        lambda: ramp_lerp(x.double(), y.double(), 3),
        lambda: ramp_lerp(x, y.to("meta"), 3),
        lambda: ramp_lerp(x[0], y[0], 3),
        lambda: ramp_lerp(x, y, 1),
        lambda: ramp_lerp(x, y, 3, impl="cuda"),
        lambda: mask_lerp(x, y, torch.rand(2, 1, 5, 7)),
        lambda: mask_lerp(x, y, torch.rand(1, 2, 5, 7)),
        lambda: shift_lerp(x, [(4, 0, 2, 2, 0, 0)]),
        lambda: shift_lerp(x, [(0, 0, 2, 2, 1, 0)]),
        lambda: shift_lerp(x, [(0, 0, 2, 2)]),
        lambda: widen(x, y, "sideways"),
        lambda: widen(x, y[..., :6], "reflect"),
        lambda: region_copy(x, y, [(4, 0, 0, 0, 2, 2)]),
        lambda: concat_w(x, y[:, :2]),
        lambda: place_columns(x, y, 5, 0, 3),
        lambda: place_columns(x, x, 0, 0, 3),
        lambda: place_columns(x.transpose(2, 3), y.transpose(2, 3), 0, 0, 3),
    ]


@pytest.mark.parametrize("index", range(len(bad_calls())))
def test_bad_arguments_raise_soat_error(index):
    with pytest.raises(SoatError):
        bad_calls()[index]()


def test_dispatch(monkeypatch):
    (x,) = maps(1, (1, 1, 2, 2))
    assert use_triton("ref", x) is False
    assert use_triton("auto", x) is (DEVICE == "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if DEVICE == "cpu":
        with pytest.raises(SoatError, match="TRITON_INTERPRET"):
            use_triton("triton", x)


def test_importing_soat_does_not_import_triton():
    code = ("import sys, soat, soat.triton_kernels.ops, soat.triton_kernels.conv_epilogue, soat.triton_kernels.demod, "
            "soat.triton_kernels.modulate, soat.triton_kernels.to_rgb; "
            "assert 'triton' not in sys.modules, 'triton was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
