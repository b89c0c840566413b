"""The editing tasks (issue 4) against what docs/contract.md#tasks implies, computed here from the layer chain.

Expected images are built with ``Generator.run_node`` and explicit noise (the checkpoint
buffers, or those buffers repeated twice along W where the widened-noise rule,
docs/contract.md#noise, says so), never by calling the task under test. Where a property is
about features rather than pixels, a recording backend (the real torch backend behind a
pass-through that keeps each node call's inputs and outputs) exposes the tensors flowing
between nodes.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import soat
from soat.runtime.backend import NodeByNode
from soat.runtime.tasks.blend import PAIRED_ENV
from soat.runtime.tasks.local import alpha_is_zero, boxes_mask
from soat.triton_kernels.ramp_lerp import ramp
from conftest import make_styles, pick, rel_err, tiered

# ---- helpers ---------------------------------------------------------------------------------------


def spec_ramp(n: int, pad: bool = True) -> torch.Tensor:
    """pad = n // 4 zeros, linspace(0, 1, n - 2 pad), pad ones; merge: plain linspace (no pad)
    (docs/contract.md#ramps)."""
    p = n // 4 if pad else 0
    a = np.concatenate([np.zeros(p), np.linspace(0.0, 1.0, n - 2 * p), np.ones(p)])
    return torch.from_numpy(a).float()


# The box blend's cut-offs (docs/contract.md#local-blend), spelled out for a 20-entry sigma list: the
# sigma indices whose alpha is cut to zero, for (pose_align, num_blend). conv1 (0) always blends;
# to_rgb1 (1) is cut only by pose alignment; a block layer i >= 2 is cut when i > num_blend, or by
# pose alignment when i < 4.
ZERO_ALPHA = {
    (False, 99): set(),
    (True, 99): {1, 2, 3},
    (False, 9): set(range(10, 20)),
    (False, 5): set(range(6, 20)),
    (True, 5): {1, 2, 3, *range(6, 20)},
    (False, 4): set(range(5, 20)),
    (True, 4): {1, 2, 3, *range(5, 20)},
    (False, 3): set(range(4, 20)),
    (True, 3): set(range(1, 20)),
    (False, 2): set(range(3, 20)),
    (True, 2): set(range(1, 20)),
    (False, 1): set(range(2, 20)),
    (True, 1): set(range(1, 20)),
    (False, 0): set(range(2, 20)),
    (True, 0): set(range(1, 20)),
}


class Recorder(NodeByNode):
    """A backend that runs the torch backend node by node and keeps every call's inputs and outputs."""

    differentiable = True
    capturable = False

    def __init__(self, backend):
        self.inner, self.calls = backend, []
        self.name, self.device, self.dtype, self.config = backend.name, backend.device, backend.dtype, backend.config

    def run(self, node_id: str, inputs: dict) -> dict:
        out = self.inner.run(node_id, inputs)
        self.calls.append((node_id, dict(inputs), out))
        return out


def recording(G: soat.Generator) -> tuple[soat.Generator, Recorder]:
    rec = Recorder(G.backend)
    return soat.Generator(rec, G.config, G.fixed_noise), rec


def node_by_id(G, node_id: str):
    return next(n for n in G.chain if n.id == node_id)


def fixed_noise_at(G):
    """Fixed noise for a layer output h x w: the buffer, or (width exactly doubled) the buffer twice along W
    (docs/contract.md#noise)."""
    def noise(node, h, w):
        n = G.fixed_noise[node.noise_index]
        if n.shape[-2:] == (h, w):
            return n
        assert (h, w) == (n.shape[-2], 2 * n.shape[-1]), "only width doubling is specified"
        return torch.cat([n, n], -1)
    return noise


def run_nodes(choose, nodes, x, rgb=None):
    """Run ``nodes`` in order; ``choose(node) -> (G, styles)`` picks generator and sigma list per node.
    Noise is each generator's fixed noise at the layer's actual size (the widened-noise rule,
    docs/contract.md#noise)."""
    for node in nodes:
        G, s = choose(node)
        nz = None
        if node.noise_index is not None:
            nz = fixed_noise_at(G)(node, x.shape[-2] * node.up, x.shape[-1] * node.up)
        out = G.run_node(node, x, s[node.style_index], nz, rgb)
        if node.kind == "to_rgb":
            rgb = out
        else:
            x = out
    return x, rgb


def plain(G, styles, nodes, x, rgb=None):
    return run_nodes(lambda node: (G, styles), nodes, x, rgb)


def two_styles(G, batch=1, seeds=(100, 200)):
    return make_styles(G, batch, seeds[0]), make_styles(G, batch, seeds[1])


# ---- alpha ramps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4, 8, 16, 32])
def test_ramp_values(n):
    assert torch.allclose(ramp(n), spec_ramp(n), rtol=0, atol=1e-7)
    assert torch.equal(ramp(n, pad=False), torch.linspace(0, 1, n))
    r = ramp(n)
    # alpha is exactly 0 on the first n // 4 + 1 entries (linspace starts at 0) and exactly 1 on the last
    assert torch.all(r[: n // 4 + 1] == 0) and torch.all(r[n - n // 4 - 1:] == 1)


def test_ramp_literal_values():
    assert ramp(4).tolist() == [0, 0, 1, 1]
    assert torch.allclose(ramp(8), torch.tensor([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1]), atol=1e-7)


# ---- blend, merge extension, merge: the lerp schedule at feature level -----------------------------------

def only(outputs: dict) -> torch.Tensor:
    (out,) = outputs.values()  # every chain node has one output
    return out


def dual_pairs(calls, batch):
    """The calls of a two-style schedule after the constant, grouped per node: (id, in1, out1, in2, out2).

    A node runs twice (batch B each), or once on both style lists (batch 2B, sigma1's samples first: up to
    PAIRED_MAX_BATCH), whose inputs and output are split into their halves here."""
    pairs, body = [], iter(calls[1:])
    for node_id, inputs, outputs in body:
        out = only(outputs)
        if out.shape[0] == 2 * batch:
            first, second = slice(0, batch), slice(batch, None)
            halves = [{k: v if k == "noise" and v.shape[0] == 1 else v[half] for k, v in inputs.items()}
                      for half in (first, second)]
            pairs.append((node_id, halves[0], out[first], halves[1], out[second]))
        else:
            second_id, inputs2, outputs2 = next(body)
            assert second_id == node_id
            pairs.append((node_id, inputs, out, inputs2, only(outputs2)))
    return pairs


def check_lerp(blended, out1, out2, alpha):
    """blended == lerp(out1, out2, alpha); exact where alpha is exactly 0 or 1."""
    assert rel_err(blended, (1 - alpha) * out1 + alpha * out2) < 1e-6
    zero, one = (alpha == 0).expand_as(out1), (alpha == 1).expand_as(out1)
    assert torch.equal(blended[zero], out1[zero]) and torch.equal(blended[one], out2[one])


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "separate"])
@pytest.mark.parametrize("task", ["blend-horizontal", "blend-vertical", "merge_extension", "merge"])
def test_schedule_lerps_every_layer_with_spec_alpha(g16, task, paired, monkeypatch):
    """Every node runs once with sigma1 and once with sigma2 on the same input (and skip); the next node
    consumes lerp(out1, out2, alpha) with the ramp of the output's size (merge: over the doubled width;
    docs/contract.md#ramps). Paired (SOAT_PAIRED_MAX_BATCH at least B) both runs are one call of batch 2B, else
    two calls. The noise each node sees is the fixed buffer (merge: after conv1, the buffer twice along W)."""
    batch = 2
    monkeypatch.setenv(PAIRED_ENV, str(batch if paired else 0))
    G, rec = recording(g16)
    s1, s2 = two_styles(g16, batch)
    if task.startswith("blend"):
        image = G.blend(s1, s2, mode=task.split("-")[1])
    else:
        image = getattr(G, task)(s1, s2)
    pairs = dual_pairs(rec.calls, batch)
    assert [p[0] for p in pairs] == [n.id for n in g16.chain[1:]]
    assert len(rec.calls) == 1 + len(pairs) * (1 if paired else 2)
    merged = not task.startswith("blend")
    for k, (node_id, in1, out1, in2, out2) in enumerate(pairs):
        node = node_by_id(g16, node_id)
        assert torch.equal(in1["style"], s1[node.style_index]) and torch.equal(in2["style"], s2[node.style_index])
        assert in1.keys() == in2.keys()
        assert all(torch.equal(in1[key], in2[key]) for key in in1 if key != "style"), "shared input, skip, noise"
        if node.noise_index is not None:
            buf = g16.fixed_noise[node.noise_index]
            want = torch.cat([buf, buf], -1) if merged and node_id != "conv1" else buf
            assert torch.equal(in1["noise"], want.expand_as(in1["noise"]))
        later = [p for p in pairs[k + 1:] if p[0].startswith("to_rgb")] if node.kind == "to_rgb" else pairs[k + 1:]
        if later:
            consumed = later[0][1]["skip" if node.kind == "to_rgb" else "x"]
        else:
            consumed = image  # the final ToRGB: the image is its blend, clamped
        if merged and node_id == "conv1":
            assert torch.equal(consumed, torch.cat([out1, out2], -1))  # side by side, unblended
            continue
        if task == "blend-vertical":
            alpha = spec_ramp(out1.shape[-2]).view(1, 1, -1, 1)
        else:
            alpha = spec_ramp(out1.shape[-1], pad=task != "merge").view(1, 1, 1, -1)
        if consumed is image:
            assert rel_err(image, ((1 - alpha) * out1 + alpha * out2).clamp(-1, 1)) < 1e-6
        else:
            check_lerp(consumed, out1, out2, alpha)


def test_blend_same_styles_is_generate(g16):
    """lerp(a, a, alpha) = a up to rounding, so blend(s, s) is the plain chain."""
    s = make_styles(g16, 2, seed=101)
    want = g16.generate(s)
    for mode in ("horizontal", "vertical"):
        assert rel_err(g16.blend(s, s, mode=mode), want) < 1e-6


@pytest.mark.parametrize("task", ["merge_extension", "merge"])
def test_merge_same_styles_is_widened_chain(g16, task):
    """With s1 == s2 every lerp is of equal maps, so the result is the plain chain of s on the 4x8 concat
    of two equal conv1 maps, with the fixed noise repeated twice along W after conv1."""
    s = make_styles(g16, 2, seed=102)
    conv1 = g16.chain[1]
    x = g16.run_node(conv1, g16.constant(s), s[0], g16.fixed_noise[0])
    _, rgb = plain(g16, s, g16.chain[2:], torch.cat([x, x], -1))
    got = getattr(g16, task)(s, s)
    assert got.shape == (2, 3, 16, 32)
    assert rel_err(got, rgb.clamp(-1, 1)) < 1e-6


def test_merge_fixed_noise_is_buffers_doubled(g16):
    """The widened-noise rule (docs/contract.md#noise) for an exact doubling: the fixed noise twice side by side."""
    s1, s2 = two_styles(g16)
    doubled = [g16.fixed_noise[0]] + [torch.cat([n, n], -1) for n in g16.fixed_noise[1:]]
    assert torch.equal(g16.merge_extension(s1, s2, noise=doubled), g16.merge_extension(s1, s2))


def test_blend_edges_depend_on_one_style_only(g8):
    """Alpha is exactly 0 on the first n // 4 + 1 columns at every layer, but 3x3 convs, the transposed conv
    and the blur read neighbouring columns, so sigma2 leaks leftwards by a few columns per layer. Tracking
    the provably sigma1-only columns through the chain (4x4: 2 of 4; conv_up: 2c - 2; 3x3 conv: c - 1;
    ToRGB: min(x, 2 c_skip - 1)) leaves exactly column 0 at 8x8 and nothing from 16x16 on. So the pixel-level
    test runs on an 8px model: its first column (row, vertically) depends only on sigma1, its last only on
    sigma2. The feature-level test above covers every layer of larger models."""
    s1, s2 = two_styles(g8)
    s2b, s1b = make_styles(g8, 1, 300), make_styles(g8, 1, 400)
    for mode, first, last in (("horizontal", (..., 0), (..., -1)), ("vertical", (..., 0, slice(None)),
                                                                    (..., -1, slice(None)))):
        img = g8.blend(s1, s2, mode=mode)
        assert torch.equal(img[first], g8.blend(s1, s2b, mode=mode)[first])
        assert torch.equal(img[last], g8.blend(s1b, s2, mode=mode)[last])
        assert not torch.equal(img, g8.blend(s1, s2b, mode=mode))  # sigma2 does matter elsewhere


# ---- panorama -------------------------------------------------------------------------------------------

def style_lists(G, n, batch=1, seed=500):
    return [make_styles(G, batch, seed + i) for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_panorama_width_and_stream(g8, n):
    lists = style_lists(g8, n)
    pano = g8.panorama(lists)
    assert pano.shape == (1, 3, 8, 2 * 8 + (n - 2) * 8)
    assert torch.equal(torch.cat(list(g8.panorama_stream(lists)), -1), pano)


def test_panorama_is_spec_stitching_of_spans(g8):
    """[0, R + p) of S_0, [p, 2R - p) of every later span, then [2R - p, 2R) of the last; p = 2R // 4
    (docs/contract.md#panorama)."""
    lists = style_lists(g8, 4)
    R, p = 8, 2 * 8 // 4
    spans = [g8.merge_extension(a, b) for a, b in zip(lists, lists[1:])]
    parts = [spans[0][..., :R + p]] + [s[..., p:2 * R - p] for s in spans[1:]] + [spans[-1][..., 2 * R - p:]]
    assert torch.equal(g8.panorama(lists), torch.cat(parts, -1))
    assert torch.equal(g8.panorama(lists[:2]), spans[0])


def stream_memory(G, n: int) -> tuple[int, int]:
    """(peak, retained) bytes allocated by torch's CPU allocator while consuming a panorama stream.

    tracemalloc sees only Python's allocator, not tensor storage, so this reads the profiler's
    memory events (``Total Allocated`` after each allocation or free, counted from the start).
    """
    lists = style_lists(G, n, seed=600)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for block in G.panorama_stream(lists):
            del block
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals), totals[-1]


@pytest.mark.full
def test_panorama_stream_memory_does_not_grow(g8):
    peak8, kept8 = stream_memory(g8, 8)
    peak64, kept64 = stream_memory(g8, 64)
    assert peak64 <= peak8 * 1.05 + (64 << 10)
    assert kept64 <= kept8 + (16 << 10)


# ---- expand -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, shape", [("horizontal", (16, 32)), ("vertical", (32, 16)), ("reflect", (16, 32)),
                                         ("replicate", (16, 32)), ("circular", (16, 32)), ("constant", (16, 32))])
def test_expand_shape_and_determinism(g16, mode, shape):
    s = make_styles(g16, 1, seed=700)
    torch.manual_seed(0)
    a = g16.expand(s, mode=mode)
    assert a.shape == (1, 3, *shape)
    torch.manual_seed(0)
    assert torch.equal(g16.expand(s, mode=mode), a)
    assert torch.equal(g16.expand(s, mode=mode, noise="fixed"), g16.expand(s, mode=mode, noise="fixed"))


def test_expand_random_noise_varies_with_seed(g16):
    s = make_styles(g16, 1, seed=701)
    torch.manual_seed(0)
    a = g16.expand(s)
    torch.manual_seed(1)
    assert rel_err(g16.expand(s), a) > 1e-3


@pytest.mark.parametrize("mode", ["reflect", "horizontal", "constant"])
def test_expand_widens_after_8x8_block(g16, mode):
    """The normal chain through the 8x8 block (conv_up, conv, to_rgb), then features and skip both widened
    (pad W // 2 each side with F.pad, or every column duplicated), the rest on the wider maps
    (docs/contract.md#expand)."""
    s = make_styles(g16, 1, seed=702)
    cut = [n.id for n in g16.chain].index("to_rgbs.0") + 1
    x, rgb = plain(g16, s, g16.chain[1:cut], g16.constant(s))
    if mode == "horizontal":
        x, rgb = x.repeat_interleave(2, -1), rgb.repeat_interleave(2, -1)
    else:
        x, rgb = F.pad(x, (4, 4, 0, 0), mode=mode), F.pad(rgb, (4, 4, 0, 0), mode=mode)
    _, rgb = plain(g16, s, g16.chain[cut:], x, rgb)
    assert rel_err(g16.expand(s, mode=mode, noise="fixed"), rgb.clamp(-1, 1)) < 1e-6


# ---- patch swap -----------------------------------------------------------------------------------------------

def test_patch_swap_identical_boxes(g32):
    """box1 == box2: the swap writes the same region again from chain 2, so it equals the single copy."""
    s1, s2 = two_styles(g32)
    box = (4, 6, 10, 8)
    once = g32.patch_swap(s1, s2, (box, box), swap=False)
    assert torch.equal(g32.patch_swap(s1, s2, (box, box), swap=True), once)
    assert not torch.equal(once, g32.generate(s1))


def test_patch_swap_same_styles_identical_boxes_is_generate(g32):
    s = make_styles(g32, 1, seed=800)
    assert rel_err(g32.patch_swap(s, s, ((2, 4, 12, 12), (2, 4, 12, 12))), g32.generate(s)) < 1e-6


def test_patch_swap_disjoint_boxes_order_symmetric(g32):
    """With disjoint regions the two writes commute: swapping (A, B) equals swapping (B, A)."""
    s1, s2 = two_styles(g32)
    a, b = (0, 0, 8, 8), (20, 18, 8, 8)
    assert torch.equal(g32.patch_swap(s1, s2, (a, b)), g32.patch_swap(s1, s2, (b, a)))


@pytest.mark.parametrize("swap", [False, True])
def test_patch_swap_matches_spec(g32, swap):
    """Boxes in output pixels / (R // 16), each number floored on its own; w, h = max of the two; copy chain 2's
    16x16 conv output into chain 1 (then the swapped copy, which wins on overlap); RGB skips untouched."""
    s1, s2 = two_styles(g32)
    boxes = ((4, 4, 12, 13), (11, 8, 8, 6))  # -> (2, 2, 6, 6), (5, 4, 4, 3) cells: w = h = 6, overlapping
    cut = [n.id for n in g32.chain].index("to_rgbs.1") + 1
    x1, rgb1 = plain(g32, s1, g32.chain[1:cut], g32.constant(s1))
    x2, _ = plain(g32, s2, g32.chain[1:cut], g32.constant(s2))
    f = x1.clone()
    f[..., 2:8, 2:8] = x2[..., 4:10, 5:11]
    if swap:
        f[..., 4:10, 5:11] = x2[..., 2:8, 2:8]
    _, rgb = plain(g32, s1, g32.chain[cut:], f, rgb1)
    assert rel_err(g32.patch_swap(s1, s2, boxes, swap=swap), rgb.clamp(-1, 1)) < 1e-6


# ---- translation --------------------------------------------------------------------------------------------

def test_translate_alpha_zero_is_generator1(g16, g16b):
    s1, s2 = two_styles(g16)
    want = g16.generate(s1)
    assert rel_err(soat.translate(g16, g16b, s1, s2, num_swap=6, alpha=0.0, early_alpha=0.0), want) < 1e-6
    zero = torch.zeros(1, 1, 16, 16)
    assert rel_err(soat.translate(g16, g16b, s1, s2, alpha=zero), want) < 1e-6


@pytest.mark.parametrize("num_swap", [0, 5])
def test_translate_alpha_one(g16, g16b, num_swap):
    """alpha 1, early 0: constant, conv1 and to_rgb1 from G1 (sigma1), then each later node i from G1 with
    sigma1 when i < num_swap, else from G2 with sigma2, always on the shared input."""
    s1, s2 = two_styles(g16)
    x, rgb = plain(g16, s1, g16.chain[1:3], g16.constant(s1))
    _, rgb = run_nodes(lambda n: (g16, s1) if n.style_index < num_swap else (g16b, s2), g16.chain[3:], x, rgb)
    got = soat.translate(g16, g16b, s1, s2, num_swap=num_swap, alpha=1.0, early_alpha=0.0)
    assert rel_err(got, rgb.clamp(-1, 1)) < 1e-6


def test_translate_all_ones_is_generator2(g16, g16b):
    s1, s2 = two_styles(g16)
    got = soat.translate(g16, g16b, s1, s2, num_swap=4, alpha=1.0, early_alpha=1.0)
    assert rel_err(got, g16b.generate(s2)) < 1e-6


# ---- blend with a mask or a box ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pose, num_blend", list(ZERO_ALPHA))
def test_alpha_zero_table(pose, num_blend):
    assert {i for i in range(20) if alpha_is_zero(i, pose, num_blend)} == ZERO_ALPHA[pose, num_blend]


def test_blend_mask_zero_is_generate_s1(g16):
    s1, s2 = two_styles(g16, 2)
    assert rel_err(g16.blend_mask(s1, s2, torch.zeros(1, 1, 16, 16)), g16.generate(s1)) < 1e-6


@pytest.mark.parametrize("pose_align, num_blend", [(False, 99), (True, 99), (False, 4), (True, 5), (False, 0),
                                                   (True, 2)])
def test_blend_mask_ones_is_per_layer_choice(g16, pose_align, num_blend):
    """An all-ones mask takes sigma2's output wherever alpha is not cut, sigma1's where it is: the plain
    chain of the per-layer mixture of the two sigma lists."""
    s1, s2 = two_styles(g16)
    mixed = [a if i in ZERO_ALPHA[pose_align, num_blend] else b for i, (a, b) in enumerate(zip(s1, s2))]
    got = g16.blend_mask(s1, s2, torch.ones(1, 1, 16, 16), pose_align=pose_align, num_blend=num_blend)
    assert rel_err(got, g16.generate(mixed)) < 1e-6


def spec_box_mask(box, size: int) -> torch.Tensor:
    """1 inside (clipped), separable Gaussian (k = d // 2 + (d // 2) % 2 + 1, sigma = k), reflect pad
    (docs/contract.md#local-blend)."""
    x, y, w, h = box
    m = np.zeros((size, size))
    m[y:y + h, x:x + w] = 1
    for axis, d in ((0, h), (1, w)):
        k = d // 2 + (d // 2) % 2 + 1
        t = np.arange(k) - k // 2
        g = np.exp(-t ** 2 / (2.0 * k * k))
        g /= g.sum()
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k // 2, k // 2)
        mp = np.pad(m, pad, mode="reflect")
        m = sum(g[i] * np.take(mp, np.arange(i, i + size), axis=axis) for i in range(k))
    return torch.from_numpy(m)[None, None]


@pytest.mark.parametrize("box, size", [((60, 40, 100, 80), 256), ((3, 5, 9, 7), 32), ((20, 24, 16, 12), 32)])
def test_box_mask_matches_spec(box, size):
    got = boxes_mask(box, size)
    assert got.shape == (1, 1, size, size)
    assert rel_err(got, spec_box_mask(box, size)) < 1e-6


def test_box_mask_matches_kornia():
    kornia = pytest.importorskip("kornia")
    x, y, w, h = 60, 40, 100, 80
    m = torch.zeros(1, 1, 256, 256)
    m[..., y:y + h, x:x + w] = 1
    kh, kw = h // 2 + (h // 2) % 2 + 1, w // 2 + (w // 2) % 2 + 1
    want = kornia.filters.gaussian_blur2d(m, (kh, kw), (float(kh), float(kw)))
    assert rel_err(boxes_mask((x, y, w, h), 256), want) < 1e-5


def test_several_boxes_take_the_max():
    a, b = (2, 2, 8, 8), (18, 16, 10, 12)
    assert torch.equal(boxes_mask([a, b], 32), torch.maximum(boxes_mask(a, 32), boxes_mask(b, 32)))


def test_blend_bbox_is_blend_mask_of_box_mask(g16):
    s1, s2 = two_styles(g16)
    box = (4, 3, 7, 6)
    for pose, nb in ((False, 99), (True, 6)):
        want = g16.blend_mask(s1, s2, boxes_mask(box, 16), pose_align=pose, num_blend=nb)
        assert torch.equal(g16.blend_bbox(s1, s2, box, pose_align=pose, num_blend=nb), want)


# ---- shift --------------------------------------------------------------------------------------------------------

def test_shift_strength_zero_is_generate(g16):
    s = make_styles(g16, 1, seed=900)
    assert rel_err(g16.shift(s, (0, 0, 4, 4), [(8, 8)], layers=[8, 16], strength=0.0), g16.generate(s)) < 1e-6


def test_shift_copies_source_features_onto_target(g16):
    """At the chosen resolutions the features (and RGB skip) passed on equal the node's output with the
    source patch written onto the target (box scaled to the layer); other layers pass their output unchanged."""
    G, rec = recording(g16)
    s = make_styles(g16, 1, seed=901)
    G.shift(s, (0, 0, 4, 4), [(8, 8)], layers=[8, 16], strength=1.0)
    calls = rec.calls[1:]
    ids = [c[0] for c in calls]
    assert ids == [n.id for n in g16.chain[1:]]
    for k, (node_id, _, out) in enumerate(calls):
        node = node_by_id(g16, node_id)
        key = "rgb" if node.kind == "to_rgb" else "x"
        consumers = [c for c in calls[k + 1:] if (c[0].startswith("to_rgbs") if key == "rgb" else True)]
        if not consumers:
            continue
        passed = consumers[0][1]["skip" if key == "rgb" else "x"]
        want = out[key].clone()
        if node.resolution in (8, 16):
            c = node.resolution // 4  # the 4-pixel box at this layer
            want[..., 2 * c:3 * c, 2 * c:3 * c] = out[key][..., 0:c, 0:c]
        assert torch.equal(passed, want), node_id


# ---- batches ------------------------------------------------------------------------------------------------------

B = 3
TASKS = {  # (G, G2, styles1, styles2, i) -> image; i indexes per-sample inputs (i = B: the whole batch)
    "blend": lambda G, G2, a, b, i: G.blend(a, b),
    "blend-vertical": lambda G, G2, a, b, i: G.blend(a, b, mode="vertical"),
    "merge_extension": lambda G, G2, a, b, i: G.merge_extension(a, b),
    "merge": lambda G, G2, a, b, i: G.merge(a, b),
    "panorama": lambda G, G2, a, b, i: G.panorama([a, b, a]),
    "panorama_stream": lambda G, G2, a, b, i: torch.cat(list(G.panorama_stream([b, a, b])), -1),
    "expand-reflect": lambda G, G2, a, b, i: G.expand(a, mode="reflect", noise="fixed"),
    "expand-vertical": lambda G, G2, a, b, i: G.expand(a, mode="vertical", noise="fixed"),
    "blend_mask": lambda G, G2, a, b, i: G.blend_mask(a, b, boxes_mask((2, 2, 8, 10), 16)),
    "blend_mask-per-sample": lambda G, G2, a, b, i: G.blend_mask(a, b, per_sample_masks()[i]),
    "blend_bbox": lambda G, G2, a, b, i: G.blend_bbox(a, b, (3, 1, 6, 5), pose_align=True, num_blend=5),
    "patch_swap": lambda G, G2, a, b, i: G.patch_swap(a, b, ((0, 2, 12, 10), (16, 14, 12, 10))),  # 32px
    "shift": lambda G, G2, a, b, i: G.shift(a, (1, 1, 4, 4), [(9, 2), (3, 10)]),
    "translate": lambda G, G2, a, b, i: soat.translate(G, G2, a, b, num_swap=4, alpha=0.6, early_alpha=0.2),
    "translate-mask": lambda G, G2, a, b, i: soat.translate(G, G2, a, b, alpha=per_sample_masks()[i]),
}


def per_sample_masks():
    """Per-sample 16px masks: entry i < B is sample i's ``[1, 1, 16, 16]``, entry B the ``[B, 1, 16, 16]`` batch."""
    m = torch.cat([boxes_mask((2 * j, 1 + j, 6, 7), 16) for j in range(B)])
    return [m[j:j + 1] for j in range(B)] + [m]


@pytest.mark.parametrize("task", tiered(TASKS, "blend-vertical", "merge", "panorama", "panorama_stream",
                                        "expand-reflect", "blend_mask", "blend_bbox", "translate-mask"))
def test_batch_equals_single_calls(request, task):
    # patch swap edits the 16x16 block, so it needs a later one; panoramas are size-agnostic (and costly)
    size = 32 if task == "patch_swap" else 8 if task.startswith("panorama") else 16
    G = request.getfixturevalue(f"g{size}")
    G2 = request.getfixturevalue(f"g{size}b") if task.startswith("translate") or size == 32 else None
    fn = TASKS[task]
    s1, s2 = two_styles(G, B)
    batch = fn(G, G2, s1, s2, B)
    assert batch.shape[0] == B
    for i in range(B):
        assert rel_err(batch[i:i + 1], fn(G, G2, pick(s1, i), pick(s2, i), i)) < 1e-5, i


@pytest.mark.parametrize("task", ["blend", "merge_extension", "blend_mask", "shift", "translate"])
def test_explicit_fixed_noise_list_equals_fixed(g16, task):
    """Every task takes a noise list; the checkpoint buffers given explicitly reproduce noise='fixed'."""
    s1, s2 = two_styles(g16)
    noise = list(g16.fixed_noise)
    run = {
        "blend": lambda nz: g16.blend(s1, s2, noise=nz),
        "merge_extension": lambda nz: g16.merge_extension(s1, s2, noise=nz),
        "blend_mask": lambda nz: g16.blend_mask(s1, s2, boxes_mask((2, 2, 8, 10), 16), noise=nz),
        "shift": lambda nz: g16.shift(s1, (0, 0, 4, 4), [(8, 8)], noise=nz),
        "translate": lambda nz: soat.translate(g16, g16, s1, s2, alpha=0.5, noise=nz),
    }[task]
    assert torch.equal(run(noise), run("fixed"))