"""The spine (issue 3): sigma space, generation, noise, and the layer math against docs/contract.md#generator.

The layer math is checked against an independent float64 numpy implementation written
here from the text of docs/contract.md#layers (transposed-conv scatter, upfirdn2d by zero
insertion, padding and a full-overlap filter), not from runtime/layers.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import soat
from soat.runtime.chain import style_channels
from soat.runtime.noise import widen_noise
from conftest import make_styles, pick, rel_err

# ---- an independent float64 StyleGAN2 from docs/contract.md#layers ------------------------------

K1 = np.array([1.0, 3.0, 3.0, 1.0])
BLUR = np.outer(K1, K1) / 64.0 * 4.0  # docs/contract.md#layers: the normalised kernel times 4 (sum 4)


def np_upfirdn2d(x: np.ndarray, up: int, p0: int, p1: int) -> np.ndarray:
    """Each sample at up*j followed by up-1 zeros, zero-pad (p0, p1), filter with BLUR, full overlaps
    (docs/contract.md#layers)."""
    b, c, h, w = x.shape
    z = np.zeros((b, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    z = np.pad(z, ((0, 0), (0, 0), (p0, p1), (p0, p1)))
    ho, wo = up * h + p0 + p1 - 3, up * w + p0 + p1 - 3
    out = np.zeros((b, c, ho, wo))
    for i in range(4):
        for j in range(4):
            out += BLUR[i, j] * z[:, :, i:i + ho, j:j + wo]
    return out


def np_modulate(weight: np.ndarray, style: np.ndarray, demodulate: bool) -> np.ndarray:
    """``weight [1, O, I, k, k]``, ``style [B, I]`` -> ``W' [B, O, I, k, k]``."""
    _, _, i, k, _ = weight.shape
    wp = weight / math.sqrt(i * k * k) * style[:, None, :, None, None]
    if demodulate:
        wp = wp / np.sqrt((wp ** 2).sum(axis=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
    return wp


def np_conv_same(x: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Per-sample correlation with padding k // 2 (PyTorch conv2d semantics)."""
    b, i, h, w = x.shape
    k = wp.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    out = np.zeros((b, wp.shape[1], h, w))
    for a in range(k):
        for c in range(k):
            patch = xp[:, :, a:a + h, c:c + w].reshape(b, i, h * w)
            out += np.matmul(wp[:, :, :, a, c], patch).reshape(b, -1, h, w)
    return out


def np_conv_transpose(x: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Input pixel (y, x) adds W'[o, i, a, b] * x to output pixel (2y + a, 2x + b); 2H+1 x 2W+1
    (docs/contract.md#layers)."""
    b, i, h, w = x.shape
    k = wp.shape[-1]
    out = np.zeros((b, wp.shape[1], 2 * h + k - 2, 2 * w + k - 2))
    for a in range(k):
        for c in range(k):
            contrib = np.matmul(wp[:, :, :, a, c], x.reshape(b, i, h * w)).reshape(b, -1, h, w)
            out[:, :, a:a + 2 * h:2, c:c + 2 * w:2] += contrib
    return out


def np_styled_conv(sd: dict, name: str, x: np.ndarray, style: np.ndarray, noise: np.ndarray,
                   up: bool) -> np.ndarray:
    wp = np_modulate(sd[f"{name}.conv.weight"], style, demodulate=True)
    out = np_upfirdn2d(np_conv_transpose(x, wp), 1, 1, 1) if up else np_conv_same(x, wp)
    out = out + sd[f"{name}.noise.weight"] * noise
    out = out + sd[f"{name}.activate.bias"][None, :, None, None]
    return np.where(out >= 0, out, 0.2 * out) * math.sqrt(2.0)


def np_to_rgb(sd: dict, name: str, x: np.ndarray, style: np.ndarray, skip: np.ndarray | None) -> np.ndarray:
    out = np_conv_same(x, np_modulate(sd[f"{name}.conv.weight"], style, demodulate=False)) + sd[f"{name}.bias"]
    return out if skip is None else out + np_upfirdn2d(skip, 2, 2, 1)


def spec_style_names(size: int) -> list[tuple[str, int]]:
    """The sigma order with each entry's W+ index: conv1, to_rgb1, then (conv_up, conv, to_rgb) per block
    (docs/contract.md#sigma-space)."""
    names = [("conv1", 0), ("to_rgb1", 1)]
    for b in range(int(math.log2(size)) - 2):
        names += [(f"convs.{2 * b}", 1 + 2 * b), (f"convs.{2 * b + 1}", 2 + 2 * b), (f"to_rgbs.{b}", 3 + 2 * b)]
    return names


def np_state(G: soat.Generator) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in G.backend.weights.state_dict().items()}


def np_generate(G: soat.Generator, styles: list[torch.Tensor], noise: list[torch.Tensor]) -> np.ndarray:
    """The whole synthesis network in float64 from docs/contract.md#layers."""
    sd = np_state(G)
    s = [t.double().numpy() for t in styles]
    nz = [t.double().numpy() for t in noise]
    x = np.repeat(sd["input.input"], s[0].shape[0], axis=0)
    x = np_styled_conv(sd, "conv1", x, s[0], nz[0], up=False)
    rgb = np_to_rgb(sd, "to_rgb1", x, s[1], None)
    for b in range(G.config.num_blocks):
        x = np_styled_conv(sd, f"convs.{2 * b}", x, s[2 + 3 * b], nz[1 + 2 * b], up=True)
        x = np_styled_conv(sd, f"convs.{2 * b + 1}", x, s[3 + 3 * b], nz[2 + 2 * b], up=False)
        rgb = np_to_rgb(sd, f"to_rgbs.{b}", x, s[4 + 3 * b], rgb)
    return np.clip(rgb, -1, 1)


# ---- layer math ----------------------------------------------------------------------------------

def test_mapping_matches_fp64_formula(g32):
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
    sd = np_state(g32)
    x = z.double().numpy()
    x = x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)
    for i in range(1, 9):
        x = x @ (sd[f"style.{i}.weight"] * 0.01 / math.sqrt(512)).T + sd[f"style.{i}.bias"] * 0.01
        x = np.where(x >= 0, x, 0.2 * x) * math.sqrt(2.0)
    assert rel_err(g32.w(z), torch.from_numpy(x)) < 1e-5


def test_affine_order_and_w_index_match_spec(g32):
    """Each sigma entry is affine_k(W+[n(k)]) in the order of docs/contract.md#sigma-space (distinct W+
    entries expose the index)."""
    wplus = torch.randn(2, g32.config.n_latent, 512, generator=torch.Generator().manual_seed(2))
    sd = np_state(g32)
    styles = g32.styles_from_w(wplus)
    names = spec_style_names(32)
    assert len(styles) == len(names) == 3 * 5 - 4
    for s, (name, n) in zip(styles, names):
        a, b = sd[f"{name}.conv.modulation.weight"], sd[f"{name}.conv.modulation.bias"]
        want = wplus[:, n].double().numpy() @ (a / math.sqrt(512)).T + b
        assert rel_err(s, torch.from_numpy(want)) < 1e-5, name


@pytest.mark.parametrize("node_id", ["conv1", "to_rgb1", "convs.0", "convs.1", "to_rgbs.0", "convs.2"])
def test_node_matches_fp64_spec(g32, node_id):
    """One node on real features vs the float64 form of docs/contract.md#layers: modulated conv,
    upsampling conv, ToRGB + skip."""
    styles = make_styles(g32, 2, seed=3)
    noise = [torch.randn(2, 1, *n.shape[-2:], generator=torch.Generator().manual_seed(i))
             for i, n in enumerate(g32.fixed_noise)]
    idx = next(i for i, n in enumerate(g32.chain) if n.id == node_id)
    node = g32.chain[idx]
    x, rgb = g32.run_chain(styles, lambda i, b, h, w: noise[i], g32.chain[1:idx], g32.constant(styles))
    skip = rgb if node.id.startswith("to_rgbs.") else None
    nz = noise[node.noise_index] if node.noise_index is not None else None
    got = g32.run_node(node, x, styles[node.style_index], nz, skip)
    sd, s, xn = np_state(g32), styles[node.style_index].double().numpy(), x.double().numpy()
    if node.kind == "to_rgb":
        want = np_to_rgb(sd, node_id, xn, s, None if skip is None else skip.double().numpy())
    else:
        want = np_styled_conv(sd, node_id, xn, s, nz.double().numpy(), up=node.kind == "conv_up")
    assert rel_err(got, torch.from_numpy(want)) < 1e-5


def test_whole_chain_matches_fp64_spec(g16):
    """The full 16px network (every layer kind) with fixed and with per-sample explicit noise."""
    styles = make_styles(g16, 2, seed=4)
    want = np_generate(g16, styles, [n.expand(2, -1, -1, -1) for n in g16.fixed_noise])
    assert rel_err(g16.generate(styles), torch.from_numpy(want)) < 1e-5
    noise = [torch.randn(2, 1, *n.shape[-2:], generator=torch.Generator().manual_seed(9 + i))
             for i, n in enumerate(g16.fixed_noise)]
    want = np_generate(g16, styles, noise)
    assert rel_err(g16.generate(styles, noise=noise), torch.from_numpy(want)) < 1e-5


def test_np_upfirdn2d_lengths():
    """The reference implementation's own contract: output length up*n + p0 + p1 - 3."""
    x = np.ones((1, 1, 5, 5))
    t = np_conv_transpose(x, np.ones((1, 1, 1, 3, 3)))
    assert t.shape[-2:] == (11, 11)  # 2H + 1
    assert np_upfirdn2d(t, 1, 1, 1).shape[-2:] == (10, 10)  # the blur brings it to 2H
    assert np_upfirdn2d(x, 2, 2, 1).shape[-2:] == (10, 10)  # the skip: n -> 2n


# ---- sigma space ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, cm, total, count", [
    (256, 2, 8704, 20), (256, 1, 7424, 20), (512, 2, 8960, 23), (1024, 2, 9088, 26)])
def test_sigma_lengths(size, cm, total, count):
    ch = style_channels(soat.GeneratorConfig(size=size, channel_multiplier=cm))
    assert (sum(ch), len(ch)) == (total, count)


def test_sigma_order_256_cm2():
    """docs/contract.md#sigma-space: fifteen of 512, then 256, 256, 256, 128, 128."""
    assert style_channels(soat.GeneratorConfig(256, 2)) == [512] * 15 + [256, 256, 256, 128, 128]


def test_sigma_order_256_cm1():
    # 4x4 and 8..32 blocks: 512; 64: conv_up 512 then 256, 256; 128: 256, 128, 128; 256: 128, 64, 64
    assert style_channels(soat.GeneratorConfig(256, 1)) == [512] * 12 + [256, 256, 256, 128, 128, 128, 64, 64]


def test_styles_of_256_model(g256):
    styles = make_styles(g256, 2, seed=5)
    assert [tuple(s.shape) for s in styles] == [(2, c) for c in style_channels(g256.config)]
    assert soat.flatten_styles(styles).shape == (2, 8704)


def test_flatten_unflatten_identity(g16):
    styles = make_styles(g16, 3, seed=6)
    flat = soat.flatten_styles(styles)
    assert flat.shape == (3, sum(style_channels(g16.config)))
    back = g16.unflatten_styles(flat)
    assert all(torch.equal(a, b) for a, b in zip(back, styles))
    assert torch.equal(soat.flatten_styles(back), flat)
    assert torch.equal(g16.generate(flat), g16.generate(styles))


def test_truncation_psi_one_is_identity(g16):
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(7))
    plain = g16.styles_from_w(g16.w(z))
    assert all(torch.equal(a, b) for a, b in zip(g16.styles(z, truncation=1.0), plain))


def test_truncation_psi_zero_gives_mean_and_is_linear(g16):
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(8))
    mean = g16.mean_styles()
    plain = g16.styles(z)
    for s, m in zip(g16.styles(z, truncation=0.0), mean):
        assert torch.equal(s, m.expand_as(s))
    for psi in (0.5, 1.5):  # psi > 1 extrapolates away from the mean (a documented difference from the reference)
        for s, p, m in zip(g16.styles(z, truncation=psi), plain, mean):
            assert rel_err(s, m + psi * (p - m)) < 1e-6


def test_mean_styles_is_mean_sigma_over_z():
    """sigma_bar = per-entry mean of sigma over the z (= affine of mean w, the affines being linear)
    (docs/contract.md#truncation)."""
    G = soat.load("random:1", size=32, channel_multiplier=1)  # estimate_mean_styles mutates: a private copy
    z = torch.randn(3000, 512, generator=torch.Generator().manual_seed(9))
    mean = G.estimate_mean_styles(z)
    want = [s.double().mean(0, keepdim=True) for s in G.styles(z)]
    for m, w in zip(mean, want):
        assert m.shape == w.shape and rel_err(m, w) < 1e-5


def test_default_mean_styles_is_near_sample_mean(g16):
    """The cached sigma_bar (50,000 private z) agrees with an independent sample mean to sampling error."""
    z = torch.randn(4000, 512, generator=torch.Generator().manual_seed(10))
    sample = soat.flatten_styles(g16.styles(z)).double().mean(0, keepdim=True)
    assert rel_err(soat.flatten_styles(g16.mean_styles()), sample) < 2e-2


# ---- generation ----------------------------------------------------------------------------------

def test_generate_shape_and_range(g16):
    img = g16.generate(make_styles(g16, 2, seed=11))
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1


@pytest.mark.full
def test_default_256_not_saturated(g256):
    """The embedded default's images (untruncated) stay mostly inside (-1, 1) and vary across the image."""
    img = g256.generate(make_styles(g256, 2, seed=12))
    assert img.shape == (2, 3, 256, 256)
    assert (img.abs() < 1).float().mean((1, 2, 3)).min() > 0.5
    assert img.std((2, 3)).min() > 0.05


def test_batch_of_4_equals_4_single_calls(g32):
    styles = make_styles(g32, 4, seed=13)
    batch = g32.generate(styles)
    for i in range(4):
        assert rel_err(batch[i:i + 1], g32.generate(pick(styles, i))) < 1e-5


def test_fixed_noise_deterministic_random_noise_not(g16):
    styles = make_styles(g16, 1, seed=14)
    assert torch.equal(g16.generate(styles), g16.generate(styles, noise="fixed"))
    torch.manual_seed(0)
    r1 = g16.generate(styles, noise="random")
    r2 = g16.generate(styles, noise="random")
    assert rel_err(r1, r2) > 1e-3
    torch.manual_seed(0)
    assert torch.equal(g16.generate(styles, noise="random"), r1)


def test_explicit_noise_list(g16):
    styles = make_styles(g16, 2, seed=15)
    assert torch.equal(g16.generate(styles, noise=list(g16.fixed_noise)), g16.generate(styles))
    other = [torch.randn_like(n.expand(2, -1, -1, -1)) for n in g16.fixed_noise]
    out = g16.generate(styles, noise=other)
    assert rel_err(out, g16.generate(styles)) > 1e-3
    # per-sample noise: sample i of the batch sees noise[...][i]
    for i in range(2):
        single = g16.generate(pick(styles, i), noise=[n[i:i + 1] for n in other])
        assert rel_err(out[i:i + 1], single) < 1e-6


def test_widen_noise_rule():
    """N(0,1) [B,1,H,W] from a CPU generator seeded with W, old noise in the first and last old_W columns
    (docs/contract.md#noise)."""
    old = torch.arange(6, dtype=torch.float32).view(1, 1, 2, 3)
    got = widen_noise(old, 2, 2, 5)
    want = torch.zeros(2, 1, 2, 5).normal_(generator=torch.Generator().manual_seed(5))
    want[..., :3] = old
    want[..., -3:] = old
    assert torch.equal(got, want)
    assert torch.equal(widen_noise(old, 1, 2, 6), torch.cat([old, old], -1))


def test_image_helpers_round_half_up(tmp_path):
    img = torch.tensor([-1.0, 0.0, 1.0, 2.0, 1 / 255 - 1]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    u8 = soat.to_uint8(img)
    assert u8.shape == (1, 1, 5, 3) and u8[0, 0, :, 0].tolist() == [0, 128, 255, 255, 1]
    path = tmp_path / "x.png"
    soat.save_png(img, path)
    assert np.array_equal(np.asarray(soat.to_pil(img)[0]), u8[0])
    assert np.array_equal(np.asarray(Image.open(path)), u8[0])


# ---- latent input errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("z, pattern", [
    (torch.randn(2, 100), r"z must be a tensor \[B, 512\]"),
    (torch.randn(512), r"z must be a tensor \[B, 512\]"),
    (torch.full((1, 512), float("nan")), "z contains NaN"),
    ([0.0] * 512, r"z must be a tensor"),
])
def test_bad_z(g32, z, pattern):
    with pytest.raises(soat.SoatError, match=pattern):
        g32.styles(z)


def test_bad_w(g32):
    with pytest.raises(soat.SoatError, match=r"W\+ \[B, 8, 512\]"):
        g32.styles_from_w(torch.randn(1, 3, 512))
