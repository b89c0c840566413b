"""GAN inversion (issue 9, docs/contract.md#inversion): schedule, prior, targets, fitting, codes and the CLI.

The two fits (the full tier, ``--full``) run on the 32 px random model, 150 steps each (about 4 steps/s
on 2 idle cores): without the prior it reaches about 33.7 dB, with it about 24 dB and a Mahalanobis
distance 40 times smaller. Everything else uses the 8 px model and a few steps.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

import soat
from soat.runtime.codes import load_codes, save_codes
from soat.runtime.inversion import (LPIPS_WEIGHT, PRIOR_SAMPLES, PRIOR_SEED, VGG16_FILE, VGG16_SHA256, inversion_loss,
                                    load_targets, lr_schedule, perceptual_loss, sigma_prior)
from soat.invert_cli import add_invert_parser, cmd_invert
from soat.runtime.styles import flatten_styles
from conftest import make_styles, rel_err

FIT_STEPS = 150


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, for images in [-1, 1] (peak-to-peak 2): ``[B]`` dB."""
    return 10 * torch.log10(4.0 / (a - b).square().mean((1, 2, 3)))


# ---- the learning-rate schedule --------------------------------------------------------------------

def test_lr_schedule_is_spec():
    """lr 0.05, linear ramp-up over the first 5% of steps, cosine ramp-down over the last 25%
    (docs/contract.md#inversion)."""
    steps = 1000
    lrs = [lr_schedule(i, steps) for i in range(steps)]
    assert lrs[0] == 0.0
    for i in range(50):  # ramp-up: linear from 0 to 0.05 over t in [0, 0.05]
        assert lrs[i] == pytest.approx(0.05 * (i / steps) / 0.05)
    assert all(lr == pytest.approx(0.05) for lr in lrs[50:751])
    for i in range(751, steps):  # ramp-down: 0.05 * (1 - cos(pi * (1 - t) / 0.25)) / 2
        t = i / steps
        assert lrs[i] == pytest.approx(0.05 * 0.5 * (1 - math.cos(math.pi * (1 - t) / 0.25)))
    assert lrs[875] == pytest.approx(0.025) and all(a > b for a, b in zip(lrs[751:], lrs[752:]))
    assert lrs[-1] < 1e-5
    assert lr_schedule(10, 100, base_lr=0.1) == pytest.approx(0.1)


# ---- the prior ------------------------------------------------------------------------------------

def test_prior_is_cached_and_leaves_global_rng_alone():
    G = soat.load("random:21", size=8, channel_multiplier=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    prior = sigma_prior(G)
    assert torch.equal(torch.rand(3), expected)
    assert sigma_prior(G) is prior
    z = torch.randn(PRIOR_SAMPLES, 512, generator=torch.Generator().manual_seed(PRIOR_SEED))
    with torch.no_grad():
        sigma = flatten_styles(G.styles(z)).double()
    assert rel_err(prior.mean, sigma.mean(0, keepdim=True)) < 1e-6
    assert rel_err(prior.var, sigma.var(0, keepdim=True)) < 1e-5
    k = torch.tensor([[0.0], [2.0]])  # 0 and 2 standard deviations along every dimension
    want = torch.tensor([0.0, 4.0 * sigma.shape[1]])
    assert rel_err(prior.mahalanobis(prior.mean + k * prior.var.sqrt()), want) < 1e-5


# ---- targets -------------------------------------------------------------------------------------

def test_targets_any_mode_resized_and_centre_cropped(tmp_path):
    wide = np.zeros((32, 64, 3), np.uint8)  # h 32, w 64: red outer eighths, green between
    wide[:, :8] = wide[:, 56:] = (255, 0, 0)
    wide[:, 8:56] = (0, 255, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    gray = Image.fromarray(np.full((20, 12), 255, np.uint8), mode="L")
    rgba = Image.fromarray(np.full((9, 9, 4), 0, np.uint8), mode="RGBA")
    pal = Image.new("P", (16, 16), color=1)
    pal.putpalette([0, 0, 0, 128, 128, 128])
    t = load_targets([tmp_path / "wide.png", gray, rgba, pal], size=16)
    assert t.shape == (4, 3, 16, 16) and t.dtype == torch.float32
    # shorter side to 16 -> 32 x 16, the centre crop keeps green only
    assert torch.allclose(t[0, 1], torch.ones(16, 16)) and torch.allclose(t[0, 0], -torch.ones(16, 16))
    assert torch.allclose(t[1], torch.ones(3, 16, 16))  # L white -> RGB white
    assert torch.allclose(t[2], -torch.ones(3, 16, 16))  # RGBA black -> RGB black
    assert torch.allclose(t[3], torch.full((3, 16, 16), 128 / 127.5 - 1), atol=1e-6)
    # targets are compared at min(R, 256)
    assert load_targets(gray, size=512).shape == (1, 3, 256, 256)


def test_tensor_targets():
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    assert torch.equal(load_targets(x[..., :16, :16], 16), x[..., :16, :16])
    t = load_targets(x, 16)
    assert t.shape == (2, 3, 16, 16) and t.min() >= -1 and t.max() <= 1
    for bad in (torch.zeros(2, 4, 16, 16), torch.zeros(1, 3, 7, 30), torch.full((1, 3, 8, 8), float("nan"))):
        with pytest.raises(soat.SoatError, match="images"):
            load_targets(bad, 16)


def test_bad_image_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((7, 40, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(soat.SoatError, match="cannot read .*notes.png"):
        load_targets(tmp_path / "notes.png", 16)
    with pytest.raises(soat.SoatError, match="cannot read .*missing.png"):
        load_targets(str(tmp_path / "missing.png"), 16)
    with pytest.raises(soat.SoatError, match=r"tiny.png.* is 40x7 pixels; .*at least 8"):
        load_targets([str(tmp_path / "tiny.png")], 16)
    with pytest.raises(soat.SoatError, match="empty"):
        load_targets([], 16)


# ---- the loss and its options ----------------------------------------------------------------------

def test_loss_is_mse_plus_20_lpips_plus_prior_per_image(g8):
    prior = sigma_prior(g8)
    flat = flatten_styles(make_styles(g8, 2, seed=4))
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    distance = lambda x, y: (x - y).abs().mean((1, 2, 3))  # noqa: E731  (a user-supplied perceptual distance)
    noise = g8.noise_fn("fixed")
    got = inversion_loss(g8, flat, target, noise, perceptual_loss(distance, g8.device), prior, 0.5)
    rgb = g8.run_chain(g8.unflatten_styles(flat), noise, g8.chain[1:], g8.constant(g8.unflatten_styles(flat)))[1]
    want = (rgb - target).square().mean((1, 2, 3)) + LPIPS_WEIGHT * distance(rgb, target) \
        + 0.5 * ((flat - prior.mean).square() / prior.var).sum(1)
    assert got.shape == (2,) and rel_err(got, want) < 1e-6


def test_lpips_options(g8, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no VGG16 weights in this hub cache
    with pytest.warns(UserWarning, match="LPIPS is off") as record:
        g8.invert(torch.zeros(1, 3, 8, 8), steps=1)
    assert len(record) == 1
    assert perceptual_loss(False, g8.device) is None and perceptual_loss("off", g8.device) is None
    with pytest.raises(soat.SoatError, match="lpips="):
        perceptual_loss(str(tmp_path / "vgg16.pth"), g8.device)
    with pytest.raises(soat.SoatError, match="lpips=3"):
        perceptual_loss(3, g8.device)
    for bad in ({"steps": 0}, {"prior_weight": -1.0}, {"lr": float("nan")}):
        with pytest.raises(soat.SoatError, match=next(iter(bad))):
            g8.invert(torch.zeros(1, 3, 8, 8), lpips=False, **bad)


def test_lpips_off_says_what_is_missing_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning) as record:
        assert perceptual_loss("auto", torch.device("cpu"), 16) is None
    (message,) = [str(w.message) for w in record]
    assert message.startswith("LPIPS is off, so inverting with MSE + prior only")
    assert f"no VGG16 weights at {tmp_path / 'checkpoints' / VGG16_FILE}: put {VGG16_FILE} there (553,433,881 " \
           f"bytes, SHA-256 {VGG16_SHA256}, from https://download.pytorch.org/models/{VGG16_FILE})" in message


def test_lpips_backbone_is_read_from_the_weights_file(tmp_path):
    """Where lpips is installed: the VGG16 file's tensors become LPIPS' backbone, with nothing downloaded."""
    lpips = pytest.importorskip("lpips")
    torchvision = pytest.importorskip("torchvision")
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / VGG16_FILE)
    ours = perceptual_loss(str(tmp_path / VGG16_FILE), torch.device("cpu"), 16)
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    for k in range(1, 6):  # lpips' slice{k} holds torchvision's features[i] under the name str(i)
        block = getattr(ref.net, f"slice{k}")
        for name in list(block._modules):
            block._modules[name] = vgg.features[int(name)]
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ours(x, y), ref(x, y))


# ---- fitting ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fits(g32):
    """An image generated from known sigma (fixed noise), inverted with and without the prior."""
    with torch.no_grad():
        target = g32.generate(make_styles(g32, 1, seed=3))
    codes = {pw: g32.invert(target, steps=FIT_STEPS, lpips=False, prior_weight=pw) for pw in (0.0, 1e-3)}
    return target, codes


@pytest.mark.full
def test_inversion_without_prior_reaches_30db(g32, fits):
    target, codes = fits
    assert codes[0.0].shape == (1, sum(g32.style_channels))
    with torch.no_grad():
        got = psnr(g32.generate(codes[0.0]), target)
    assert (got >= 30).all(), got


@pytest.mark.full
def test_prior_pulls_codes_towards_the_mean(g32, fits):
    """The default prior trades fidelity for codes much nearer mu (docs/contract.md#inversion: do not tune it away)."""
    target, codes = fits
    prior = sigma_prior(g32)
    near, free = prior.mahalanobis(codes[1e-3]), prior.mahalanobis(codes[0.0])
    assert (near < 0.5 * free).all(), (near, free)
    with torch.no_grad():
        assert (psnr(g32.generate(codes[1e-3]), target) > 18).all()


def test_fast_path_inversion_matches_the_torch_path(g32, fits):
    """The fast backend inverts too (gradients flow through its kernels' torch references): a few steps from the
    same start give the torch path's codes to 1e-4."""
    target, _ = fits
    fast = soat.load("random:1", size=32, channel_multiplier=1, backend="fast")
    codes = {G.backend.name: G.invert(target, steps=5, lpips=False) for G in (g32, fast)}
    assert not torch.equal(codes["fast"], sigma_prior(fast).mean)  # the codes moved: gradients reached them
    assert rel_err(codes["fast"], codes["torch"]) < 1e-4


def test_batched_inversion_equals_one_at_a_time(g8):
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    both = g8.invert(target, steps=4, lpips=False)
    one = g8.invert(target[1:], steps=4, lpips=False)
    assert rel_err(both[1:], one) < 1e-5


def test_inversion_under_no_grad(g8):
    with torch.no_grad():
        codes = g8.invert(torch.zeros(1, 3, 8, 8), steps=3, lpips=False)
    assert not torch.equal(codes, sigma_prior(g8).mean)


# ---- codes -----------------------------------------------------------------------------------------

def test_codes_round_trip_and_wrong_model_refused(g8, g16, tmp_path):
    codes = flatten_styles(make_styles(g8, 3, seed=9))
    path = save_codes(tmp_path / "sub" / "codes.pt", codes, g8)
    assert torch.equal(load_codes(path, g8), codes)
    assert torch.equal(load_codes(path, soat.load("random:8", size=8, channel_multiplier=1)), codes)
    other = soat.load("random:9", size=8, channel_multiplier=1)  # same layout, other weights
    with pytest.raises(soat.SoatError, match="another model"):
        load_codes(path, other)
    assert torch.equal(load_codes(path, other, check_model=False), codes)
    with pytest.raises(soat.SoatError, match="8px .* 16px.*layouts differ"):
        load_codes(path, g16, check_model=False)
    torch.save({"styles": codes}, tmp_path / "plain.pt")
    with pytest.raises(soat.SoatError, match="not a soat codes file"):
        load_codes(tmp_path / "plain.pt", g8)
    with pytest.raises(soat.SoatError, match="not found"):
        load_codes(tmp_path / "none.pt", g8)


def test_invert_cli(tmp_path, capsys):
    img = (np.random.default_rng(0).random((20, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(img, mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(img[..., 0], mode="L").save(tmp_path / "b.png")
    parser = argparse.ArgumentParser()
    add_invert_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["invert", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
                              str(tmp_path / "codes.pt"), "--checkpoint", "random:8", "--size", "8",
                              "--channel-multiplier", "1", "--steps", "2", "--lpips", "off",
                              "--preview", str(tmp_path / "rec.png")])
    assert cmd_invert(args) == 0
    codes = load_codes(tmp_path / "codes.pt", soat.load("random:8", size=8, channel_multiplier=1))
    assert codes.shape == (2, 2560)
    assert (tmp_path / "rec_0.png").exists() and (tmp_path / "rec_1.png").exists()
    assert "wrote 2 codes" in capsys.readouterr().out
