"""Every bad task input gets one ``SoatError`` naming the argument, the value and what is allowed (issue 4).

Most cases run on the 16px generator (the checks happen before any layer runs); patch swap
needs 32px. Each message is matched on the argument's name and the offending value.
"""

from __future__ import annotations

import pytest
import torch

import soat
from conftest import make_styles


@pytest.fixture(scope="module")
def s16(g16):
    return make_styles(g16, 2, seed=1), make_styles(g16, 2, seed=2)


@pytest.fixture(scope="module")
def s32(g32):
    return make_styles(g32, 1, seed=1), make_styles(g32, 1, seed=2)


def raises(pattern: str):
    return pytest.raises(soat.SoatError, match=pattern)


def with_entry(styles, k, value):
    out = list(styles)
    out[k] = value
    return out


# ---- styles ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, pattern", [
    ("short", r"styles1 must be a list of 8 sigma tensors .* got 7 entries"),
    ("width", r"styles1\[3\] must be \[B, 512\]; got \[2, 100\]"),
    ("nan", r"styles1\[4\] contains NaN or inf"),
    ("inf", r"styles1\[0\] contains NaN or inf"),
    ("inner-batch", r"styles1\[2\] has batch 1, but styles1\[0\] has 2"),
    ("flat-width", r"flat styles must be a tensor \[B, 4096\] for this model; got \[2, 5000\]"),
    ("not-a-list", r"styles1 must be a list of 8 sigma tensors .* got str"),
    ("not-tensors", r"styles1\[0\] must be \[B, 512\]; got list"),
])
def test_bad_styles(g16, s16, case, pattern):
    s1, s2 = s16
    bad = {
        "short": s1[:-1],
        "width": with_entry(s1, 3, torch.ones(2, 100)),
        "nan": with_entry(s1, 4, s1[4].clone().fill_(float("nan"))),
        "inf": with_entry(s1, 0, torch.full_like(s1[0], float("inf"))),
        "inner-batch": with_entry(s1, 2, s1[2][:1]),
        "flat-width": torch.ones(2, 5000),
        "not-a-list": "styles",
        "not-tensors": with_entry(s1, 0, [1.0] * 512),
    }[case]
    with raises(pattern):
        g16.blend(bad, s2)


def test_style_batches_must_match(g16, s16):
    s1, s2 = s16
    with raises(r"styles1 has batch 2 but styles2 has 1; they must match"):
        g16.merge_extension(s1, [s[:1] for s in s2])
    with raises(r"styles1 has batch 2 but styles2 has 1"):
        soat.translate(g16, g16, s1, [s[:1] for s in s2])


def test_styles_of_another_layout(g16, g32, s32):
    with raises(r"styles must be a list of 8 sigma tensors .* got 11 entries"):
        g16.generate(s32[0])


@pytest.mark.parametrize("task", ["blend", "merge", "merge_extension", "blend_mask", "blend_bbox", "expand", "shift",
                                  "generate"])
def test_every_task_validates_styles(g16, s16, task):
    s1, s2 = s16
    bad = with_entry(s1, 5, torch.full_like(s1[5], float("nan")))
    call = {
        "blend": lambda: g16.blend(s1, bad),
        "merge": lambda: g16.merge(bad, s2),
        "merge_extension": lambda: g16.merge_extension(s1, bad),
        "blend_mask": lambda: g16.blend_mask(bad, s2, torch.zeros(1, 1, 16, 16)),
        "blend_bbox": lambda: g16.blend_bbox(s1, bad, (2, 2, 4, 4)),
        "expand": lambda: g16.expand(bad),
        "shift": lambda: g16.shift(bad, (0, 0, 4, 4), [(8, 8)]),
        "generate": lambda: g16.generate(bad),
    }[task]
    with raises(r"\[5\] contains NaN or inf"):
        call()


# ---- modes and noise ----------------------------------------------------------------------------------

def test_unknown_modes(g16, s16):
    s1, s2 = s16
    with raises(r"mode='diagonal' is not a blend mode; use 'horizontal' or 'vertical'"):
        g16.blend(s1, s2, mode="diagonal")
    with raises(r"mode='zigzag' is not an expand mode; use one of horizontal, vertical, reflect"):
        g16.expand(s1, mode="zigzag")


@pytest.mark.parametrize("noise, pattern", [
    ("foggy", r"noise='foggy' is not a noise mode; use 'fixed', 'random' or a list of tensors"),
    ("list-short", r"noise must be 'fixed', 'random' or a list of 5 tensors .* of length 4"),
    ("list-3d", r"noise\[1\] must be a tensor \[1 or B, 1, H, W\]; got \[1, 8, 8\]"),
    ("list-nan", r"noise\[0\] contains NaN or inf"),
    ("list-too-big", r"noise of shape \[1, 1, 16, 16\] cannot feed a layer output of \[2, 1, 8, 8\]"),
    ("number", r"noise must be 'fixed', 'random' or a list of 5 tensors .* got float"),
])
def test_bad_noise(g16, s16, noise, pattern):
    s1, s2 = s16
    fixed = list(g16.fixed_noise)
    arg = {
        "foggy": "foggy",
        "list-short": fixed[:-1],
        "list-3d": with_entry(fixed, 1, torch.zeros(1, 8, 8)),
        "list-nan": with_entry(fixed, 0, torch.full((1, 1, 4, 4), float("nan"))),
        "list-too-big": with_entry(fixed, 1, torch.zeros(1, 1, 16, 16)),
        "number": 0.5,
    }[noise]
    with raises(pattern):
        g16.blend(s1, s2, noise=arg)


# ---- boxes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("box, pattern", [
    ((20, 0, 4, 4), r"box=\(20, 0, 4, 4\) leaves the image; boxes must start inside the 16x16 output"),
    ((-1, 2, 4, 4), r"box=\(-1, 2, 4, 4\) leaves the image"),
    ((2, 2, 0, 4), r"box=\(2, 2, 0, 4\) has a zero or negative size; w and h must be >= 1"),
    ((2, 2, 4, -3), r"box=\(2, 2, 4, -3\) has a zero or negative size"),
    ((2.5, 2, 4, 4), r"box=\(2.5, 2, 4, 4\) must be whole pixels"),
    (("a", 2, 4, 4), r"box=\('a', 2, 4, 4\) must be 4 integers \(x, y, w, h\) in output pixels"),
    ((1, 2, 3), r"box=\(1, 2, 3\) must be 4 integers"),
    (None, r"box=None must be 4 integers"),
])
def test_bad_bbox(g16, s16, box, pattern):
    with raises(pattern):
        g16.blend_bbox(*s16, box)


def test_bad_box_in_a_list(g16, s16):
    with raises(r"box=\(3, 3, 0, 2\) has a zero or negative size"):
        g16.blend_bbox(*s16, [(1, 1, 4, 4), (3, 3, 0, 2)])


@pytest.mark.parametrize("boxes, pattern", [
    (((28, 0, 8, 8), (0, 0, 8, 8)), r"boxes\[0\]=\(28, 0, 8, 8\) leaves the image; boxes must lie inside the 32x32"),
    (((0, 0, 8, 8), (0, 30, 8, 4)), r"boxes\[1\]=\(0, 30, 8, 4\) leaves the image"),
    (((0, 0, 8, 8), (4, 4, 0, 8)), r"boxes\[1\]=\(4, 4, 0, 8\) has a zero or negative size"),
    (((0, 0, 8, 8), (4, 4, 8.5, 8)), r"boxes\[1\]=\(4, 4, 8.5, 8\) must be whole pixels"),
    (((0, 0, 8, 8),), r"boxes=\(\(0, 0, 8, 8\),\) must be two boxes"),
    ((0, 0, 8, 8), r"boxes=\(0, 0, 8, 8\) must be two boxes"),
    (((0, 0, 30, 8), (24, 0, 4, 4)), r"boxes\[1\]: on the 16x16 feature map the copied region \(15x4 cells at 12,0\)"),
])
def test_bad_patch_swap_boxes(g32, s32, boxes, pattern):
    with raises(pattern):
        g32.patch_swap(*s32, boxes)


def test_patch_swap_boxes_under_a_cell_are_refused(g32, s32):
    """Issue 18 #9: boxes smaller than R/16 mapped to an empty copy and silently changed nothing."""
    with raises(r"both boxes cover no whole cell wide; patch swap needs a box at least R/16 = 2 px wide and high"):
        g32.patch_swap(*s32, ((0, 0, 1, 1), (8, 8, 1, 1)))
    with raises(r"cover no whole cell high"):
        g32.patch_swap(*s32, ((0, 0, 8, 1), (8, 8, 8, 1)))
    assert g32.patch_swap(*s32, ((0, 0, 2, 2), (8, 8, 2, 2))).shape == (1, 3, 32, 32)  # one cell: fine


def test_patch_swap_needs_32px(g16, s16):
    with raises(r"needs a model of at least 32px \(this one is 16px\)"):
        g16.patch_swap(*s16, ((0, 0, 4, 4), (8, 8, 4, 4)))


@pytest.mark.parametrize("kwargs, pattern", [
    ({"source_box": (14, 0, 4, 4)}, r"source_box=\(14, 0, 4, 4\) leaves the image"),
    ({"source_box": (0, 0, 0, 4)}, r"source_box=\(0, 0, 0, 4\) has a zero or negative size"),
    ({"targets": [(14, 14)]}, r"targets\[0\]=\(14, 14, 4, 4\) leaves the image"),
    ({"targets": [(8, 8, 5, 5)]}, r"targets\[0\]=\(8, 8, 5, 5\) must have the source box's size 4x4"),
    ({"targets": [(8,)]}, r"targets\[0\]=\(8,\) must be \(x, y\) or \(x, y, w, h\)"),
    ({"layers": [7]}, r"layers=\(7,\): give resolutions among \[8, 16\]"),
    ({"layers": [32]}, r"layers=\(32,\): give resolutions among \[8, 16\]"),
    ({"layers": []}, r"layers=\(\): give resolutions among"),
    ({"strength": 1.5}, r"strength=1.5 must be in \[0, 1\]"),
])
def test_bad_shift(g16, s16, kwargs, pattern):
    args = {"source_box": (0, 0, 4, 4), "targets": [(8, 8)], **kwargs}
    with raises(pattern):
        g16.shift(s16[0], args.pop("source_box"), args.pop("targets"), **args)


# ---- masks and per-layer limits ----------------------------------------------------------------------------

@pytest.mark.parametrize("mask, pattern", [
    (torch.zeros(1, 16, 16), r"mask must be a tensor \[1 or 2, 1, Hm, Wm\] \(the images have batch 2\); got \[1, 16, 16\]"),
    (torch.zeros(1, 3, 16, 16), r"mask must be a tensor \[1 or 2, 1, Hm, Wm\] \(the images have batch 2\); got \[1, 3, 16, 16\]"),
    (torch.zeros(3, 1, 16, 16), r"mask must be a tensor \[1 or 2, 1, Hm, Wm\] \(the images have batch 2\); got \[3, 1, 16, 16\]"),
    ([[0.0]], r"mask must be a tensor \[1 or 2, 1, Hm, Wm\] \(the images have batch 2\); got list"),
    (torch.full((1, 1, 16, 16), 1.5), r"mask values must be finite and inside \[0, 1\]"),
    (torch.full((1, 1, 16, 16), -0.2), r"mask values must be finite and inside \[0, 1\]"),
    (torch.full((1, 1, 16, 16), float("nan")), r"mask values must be finite"),
])
def test_bad_mask(g16, s16, mask, pattern):
    with raises(pattern):
        g16.blend_mask(*s16, mask)


@pytest.mark.parametrize("num_blend", [2.5, "3", True, None])
def test_num_blend_must_be_int(g16, s16, num_blend):
    with raises(rf"num_blend={num_blend!r} must be an integer sigma index".replace("(", r"\(").replace(".", r"\.")):
        g16.blend_mask(*s16, torch.zeros(1, 1, 16, 16), num_blend=num_blend)
    with raises("num_blend="):
        g16.blend_bbox(*s16, (2, 2, 4, 4), num_blend=num_blend)


# ---- panoramas ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lists, pattern", [
    ("one", r"a panorama needs a list of N >= 2 style lists; got 1"),
    ("none", r"a panorama needs a list of N >= 2 style lists; got 0"),
    ("tensor", r"a panorama needs a list of N >= 2 style lists; got Tensor"),
    ("batches", r"every style list of a panorama must have the same batch; got batches \[1, 2\]"),
    ("bad-entry", r"style_lists\[1\]\[3\] contains NaN or inf"),
])
def test_bad_panorama(g16, s16, lists, pattern):
    s1, s2 = s16
    arg = {
        "one": [s1],
        "none": [],
        "tensor": torch.zeros(2, 3),
        "batches": [s1, [s[:1] for s in s2]],
        "bad-entry": [s1, with_entry(s2, 3, torch.full_like(s2[3], float("inf")))],
    }[lists]
    with raises(pattern):
        g16.panorama(arg)
    with raises(pattern):
        g16.panorama_stream(arg)  # checked at the call, before any block is computed


def test_panorama_sampler_needs_two(g16):
    with raises(r"n=1: a panorama needs at least 2 images"):
        g16.panorama_styles(1)


def test_blend_bbox_box_wider_than_4r(g16, s16):
    """Issue 18 #9: a box wider than 4R ended in an F.pad RuntimeError; now a clear refusal naming the limit."""
    with raises(r"box=\(0, 0, 62, 4\) is too large: its blurred mask needs w and h <= 61 \(4R - 3 at 16px\)"):
        g16.blend_bbox(*s16, (0, 0, 62, 4))
    with raises(r"box=\(2, 0, 4, 100\) is too large"):
        g16.blend_bbox(*s16, [(0, 0, 4, 4), (2, 0, 4, 100)])
    assert g16.blend_bbox(*s16, (0, 0, 61, 61)).shape == (2, 3, 16, 16)  # the largest box still runs


def test_memory_bounds_refuse_early(g16, s16, monkeypatch):
    """Issue 18 #5: huge panoramas and column ranges are refused before anything is allocated, with the limit."""
    from soat.runtime.tasks import panorama as P

    with raises(r"n=100000000 style lists would take .* GiB, over the 1 GiB limit \(MAX_STYLE_BYTES; at most \d+ "
                r"images for this model\); for longer panoramas use the endless one"):
        g16.panorama_styles(10 ** 8)
    with raises(r"columns \[0, 10000000000\) would be \[1, 3, 16, 10000000000\] .* over the 2 GiB a call may "
                r"allocate \(MAX_OUTPUT_BYTES\); ask for fewer columns per call"):
        g16.panorama_columns(0, 0, 10 ** 10)
    monkeypatch.setattr(P, "MAX_OUTPUT_BYTES", 2 * 3 * 16 * 64 * 4)  # two 16 x 64 RGB fp32 images: N = 4 at 16 px
    s1, s2 = s16
    assert g16.panorama([s1, s2, s1, s2]).shape == (2, 3, 16, 64)
    with raises(r"a panorama of 5 images would be \[2, 3, 16, 80\] .*; use G.panorama_stream"):
        g16.panorama([s1, s2, s1, s2, s1])
    assert sum(b.shape[-1] for b in g16.panorama_stream([s1, s2, s1, s2, s1])) == 80  # the stream is not bounded
    with raises(r"columns \[3, 132\) would be \[1, 3, 16, 129\]"):  # 128 columns of batch 1 would fit
        g16.panorama_columns(0, 3, 129)


# ---- translation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, pattern", [
    ({"num_swap": -1}, r"num_swap=-1 must be an integer >= 0"),
    ({"num_swap": 2.5}, r"num_swap=2.5 must be an integer >= 0"),
    ({"alpha": 1.5}, r"alpha=1.5 must be a number in \[0, 1\] or a mask tensor"),
    ({"early_alpha": -0.1}, r"early_alpha=-0.1 must be a number in \[0, 1\]"),
    ({"alpha": "half"}, r"alpha='half' must be a number in \[0, 1\]"),
    ({"alpha": torch.zeros(1, 2, 16, 16)}, r"mask must be a tensor \[1 or 2, 1, Hm, Wm\] \(the images have batch 2\); got \[1, 2, 16, 16\]"),
    ({"alpha": torch.full((1, 1, 16, 16), 2.0)}, r"mask values must be finite and inside \[0, 1\]"),
])
def test_bad_translate(g16, g16b, s16, kwargs, pattern):
    with raises(pattern):
        soat.translate(g16, g16b, *s16, **kwargs)


def test_translate_needs_one_layout(g16, g32, s16):
    with raises(r"translate needs two generators of one layout"):
        soat.translate(g16, g32, *s16)
