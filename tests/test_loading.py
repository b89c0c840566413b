"""Checkpoint loading (issue 3): the real rosinality format round trip, layout inference, and one
clear ``SoatError`` for every bad file, with no traceback from inside torch."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import random

import pytest
import torch

import soat
from soat.runtime.config import GeneratorConfig
from soat.runtime.weights import StyleGAN2Weights
from conftest import make_styles, rel_err

K1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
BLUR = torch.outer(K1, K1) / 64 * 4  # docs/contract.md#layout: the 4x4 kernel stored as both blur buffers


def rosinality_g_ema(sd: dict[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """A state dict in rosinality's g_ema layout: soat's keys plus the blur-kernel buffers."""
    out = dict(sd)
    for b in range(config.num_blocks):
        out[f"convs.{2 * b}.conv.blur.kernel"] = BLUR.clone()
        out[f"to_rgbs.{b}.upsample.kernel"] = BLUR.clone()
    return out


def zeros_g_ema(size: int, cm: int) -> dict[str, torch.Tensor]:
    """A rosinality-layout g_ema of zeros (layout tests need shapes, not values)."""
    config = GeneratorConfig(size=size, channel_multiplier=cm)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in StyleGAN2Weights(config).state_dict().items()}
    return rosinality_g_ema({k: torch.zeros(s) for k, s in shapes.items()}, config)


def save_ckpt(path, g_ema, **extra) -> str:
    torch.save({"g_ema": g_ema, **extra}, path)
    return os.fspath(path)


@pytest.fixture(scope="module")
def g16_ckpt(g16, tmp_path_factory) -> str:
    """g16 saved as a training-style rosinality checkpoint (g, d, latent_avg, optimizer state)."""
    sd = g16.backend.weights.state_dict()
    d = {"convs.0.0.weight": torch.randn(64, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)}
    return save_ckpt(tmp_path_factory.mktemp("ckpt") / "g16.pt", rosinality_g_ema(sd, g16.config),
                     g={k: v.clone() for k, v in list(sd.items())[:4]}, d=d, latent_avg=torch.randn(512),
                     g_optim={"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
                     args=argparse.Namespace(size=16, channel_multiplier=1, lr=0.002))  # as train.py saves


def assert_clear(excinfo) -> None:
    """One line, and no chained exception (so no traceback from inside torch)."""
    e = excinfo.value
    assert "\n" not in str(e)
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)


# ---- round trip and inference ---------------------------------------------------------------------

def test_round_trip_same_images(g16, g16_ckpt):
    G = soat.load(g16_ckpt)
    assert G.config.size == 16
    styles = make_styles(g16, 2, seed=20)
    assert torch.equal(G.generate(styles), g16.generate(styles))
    assert torch.equal(G.generate(styles, noise="fixed"), g16.generate(styles, noise="fixed"))
    assert len(G.fingerprint) == 64  # the file's sha256


def test_round_trip_legacy_torch_format(g16, tmp_path):
    """Checkpoints written by old torch versions (pre-zip serialization) load the same."""
    path = tmp_path / "legacy.pt"
    torch.save({"g_ema": rosinality_g_ema(g16.backend.weights.state_dict(), g16.config)}, path,
               _use_new_zipfile_serialization=False)
    styles = make_styles(g16, 1, seed=21)
    assert torch.equal(soat.load(path).generate(styles), g16.generate(styles))


def test_round_trip_of_path_object_with_given_layout(g16_ckpt):
    G = soat.load(pathlib.Path(g16_ckpt), size=16, channel_multiplier=1)
    assert G.config == GeneratorConfig(16, 1)


@pytest.mark.parametrize("size, cm", [(64, 1), (64, 2), (256, 1), (256, 2)])
def test_infers_size_and_channel_multiplier(tmp_path, size, cm):
    G = soat.load(save_ckpt(tmp_path / "m.pt", zeros_g_ema(size, cm), latent_avg=torch.zeros(512)))
    assert (G.config.size, G.config.channel_multiplier) == (size, cm)
    assert sum(G.style_channels) == sum(n.in_channels for n in G.chain[1:])


def test_infers_size_32(tmp_path):
    """Below 64 px every layer has 512 channels, so any channel multiplier describes the file."""
    G = soat.load(save_ckpt(tmp_path / "m.pt", zeros_g_ema(32, 1)))
    assert G.config.size == 32


def test_latent_avg_centres_truncation(g16, g16_ckpt, tmp_path):
    """Issue 18: a rosinality checkpoint's top-level ``latent_avg`` is the truncation centre, as NVIDIA's w_avg."""
    G = soat.load(g16_ckpt)
    latent_avg = torch.load(g16_ckpt, weights_only=False)["latent_avg"]
    assert G.mean_source == "checkpoint w_avg" and g16.mean_source == "sampled"
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(4))
    w = G.w(z)
    expected = G.styles_from_w(latent_avg + 0.6 * (w - latent_avg))  # truncation in W around latent_avg
    assert max((a - b).abs().max().item() for a, b in zip(G.styles(z, truncation=0.6), expected)) < 1e-5
    sd = rosinality_g_ema(g16.backend.weights.state_dict(), g16.config)
    for bad, pattern in ((torch.zeros(2, 3), r"latent_avg must be a mean latent of 512 floats; got \[2, 3\]"),
                         ("mean", r"latent_avg must be a mean latent of 512 floats; got str"),
                         (torch.full((512,), float("inf")), r"tensor 'latent_avg' holds 512 NaN or inf")):
        with pytest.raises(soat.SoatError, match=pattern) as e:
            soat.load(save_ckpt(tmp_path / "bad.pt", sd, latent_avg=bad))
        assert_clear(e)


def test_random_default_and_seeds():
    G = soat.load("random:7", size=32, channel_multiplier=1)
    again = soat.load("random:7", size=32, channel_multiplier=1)
    other = soat.load("random:8", size=32, channel_multiplier=1)
    sd, sd2, sd3 = (g.backend.weights.state_dict() for g in (G, again, other))
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(sd["conv1.conv.weight"], sd3["conv1.conv.weight"])
    # the random model exercises every term: non-zero biases and noise strengths
    assert all(sd[f"{c}.noise.weight"].abs().min() > 0 for c in ["conv1", "convs.0", "convs.1"])
    assert sd["conv1.activate.bias"].abs().max() > 0 and sd["to_rgbs.0.bias"].abs().max() > 0


def test_random_default_layout(g256):
    assert (g256.config.size, g256.config.channel_multiplier) == (256, 2)


# ---- bad files ------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(soat.SoatError, match="checkpoint not found") as e:
        soat.load(tmp_path / "nope.pt")
    assert_clear(e)


def test_folder(tmp_path):
    with pytest.raises(soat.SoatError, match="is a folder") as e:
        soat.load(tmp_path)
    assert_clear(e)


@pytest.mark.parametrize("seed", [0, 7, 17])
def test_random_bytes(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes([0x11]) + bytes(rng.getrandbits(8) for _ in range(4000)))
    with pytest.raises(soat.SoatError, match="not a PyTorch checkpoint|cannot read .* as a PyTorch checkpoint") as e:
        soat.load(path)
    assert_clear(e)


@pytest.mark.parametrize("text", ["hello, this is not a checkpoint\n", '{"g_ema": {"conv1": 1}}\n' * 10, ""])
def test_text_file(tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(soat.SoatError, match="not a PyTorch checkpoint|cannot read .* as a PyTorch checkpoint") as e:
        soat.load(path)
    assert_clear(e)


def test_truncated_file(g16_ckpt, tmp_path):
    data = open(g16_ckpt, "rb").read()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(soat.SoatError, match="truncated") as e:
        soat.load(path)
    assert_clear(e)


@pytest.mark.parametrize("content, pattern", [
    ({"state_dict": {"conv1.conv.weight": torch.zeros(1)}}, r"no 'g_ema' entry \(found \['state_dict'\]\)"),
    (torch.zeros(3), r"no 'g_ema' entry \(found Tensor\)"),
    ({"g_ema": {"conv1.conv.weight": 1.0}}, "'g_ema' is not a state dict of tensors"),
])
def test_no_g_ema(tmp_path, content, pattern):
    path = tmp_path / "x.pt"
    torch.save(content, path)
    with pytest.raises(soat.SoatError, match=pattern) as e:
        soat.load(path)
    assert_clear(e)


def test_bare_state_dict_names_its_keys(g16, tmp_path):
    """A g_ema state dict saved on its own: the message shows what the file holds."""
    path = tmp_path / "bare.pt"
    torch.save(g16.backend.weights.state_dict(), path)
    with pytest.raises(soat.SoatError, match=r"no 'g_ema' entry \(found \['conv1\.") as e:
        soat.load(path)
    assert_clear(e)


def test_missing_key(tmp_path):
    sd = zeros_g_ema(32, 1)
    del sd["convs.1.noise.weight"]
    with pytest.raises(soat.SoatError, match=r"missing 1 keys .*convs\.1\.noise\.weight") as e:
        soat.load(save_ckpt(tmp_path / "m.pt", sd))
    assert_clear(e)


def test_unexpected_key(tmp_path):
    sd = zeros_g_ema(32, 1)
    sd["convs.1.extra.weight"] = torch.zeros(3)
    with pytest.raises(soat.SoatError, match=r"unexpected 1 keys .*convs\.1\.extra\.weight") as e:
        soat.load(save_ckpt(tmp_path / "m.pt", sd))
    assert_clear(e)


def test_wrong_shape(tmp_path):
    sd = zeros_g_ema(32, 1)
    sd["conv1.conv.weight"] = torch.zeros(1, 512, 512, 1, 1)
    with pytest.raises(soat.SoatError, match=r"conv1\.conv\.weight has shape \[1, 512, 512, 1, 1\], expected "
                                             r"\[1, 512, 512, 3, 3\]") as e:
        soat.load(save_ckpt(tmp_path / "m.pt", sd))
    assert_clear(e)


def test_channels_fit_no_multiplier(tmp_path):
    sd = zeros_g_ema(64, 1)
    sd["convs.6.conv.weight"] = torch.zeros(1, 300, 512, 3, 3)
    with pytest.raises(soat.SoatError, match="300 channels, which fits no channel multiplier") as e:
        soat.load(save_ckpt(tmp_path / "m.pt", sd))
    assert_clear(e)


def test_no_generator_keys(tmp_path):
    with pytest.raises(soat.SoatError, match="not a StyleGAN2 generator") as e:
        soat.load(save_ckpt(tmp_path / "m.pt", {"fc.weight": torch.zeros(3, 3)}))
    assert_clear(e)


def test_size_mismatch_with_given_size(g16_ckpt):
    with pytest.raises(soat.SoatError, match=r"holds a 16px generator .* but size=64 was given") as e:
        soat.load(g16_ckpt, size=64)
    assert_clear(e)


def test_channel_multiplier_mismatch(tmp_path):
    path = save_ckpt(tmp_path / "m.pt", zeros_g_ema(64, 1))
    with pytest.raises(soat.SoatError, match="has channel_multiplier 1 but 2 was given") as e:
        soat.load(path, channel_multiplier=2)
    assert_clear(e)


class Payload:
    """An arbitrary object: unpickling it needs this module's code."""

    def __init__(self):
        self.value = 3


class Exploit:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_of_a_custom_class_is_refused(g16, tmp_path):
    path = save_ckpt(tmp_path / "obj.pt", rosinality_g_ema(g16.backend.weights.state_dict(), g16.config),
                     extra=Payload())
    with pytest.raises(soat.SoatError, match="code execution") as e:
        soat.load(path)
    assert_clear(e)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_calling_os_system_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"g_ema": {"conv1.conv.weight": torch.zeros(1)}, "x": Exploit(os.fspath(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(soat.SoatError, match="code execution") as e:
        soat.load(path)
    assert_clear(e)
    assert not marker.exists()


# ---- bad load arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, pattern", [
    ({"backend": "tensorflow"}, "backend='tensorflow' is unknown"),
    ({"dtype": "int8"}, "dtype='int8' is not supported"),
    ({"device": "not-a-device"}, "device='not-a-device' is not a device"),
    ({"size": 100}, "size=100 is not a StyleGAN2 resolution"),
    ({"channel_multiplier": 3}, "channel_multiplier=3 is not supported"),
])
def test_bad_load_arguments(kwargs, pattern):
    with pytest.raises(soat.SoatError, match=pattern):
        soat.load("random", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu():
    with pytest.raises(soat.SoatError, match="no CUDA GPU"):
        soat.load("random", size=32, device="cuda")


def test_stored_mean_styles_are_checked():
    from soat.runtime.generator import Generator
    G = soat.load("random:0", size=8, channel_multiplier=1)
    total = sum(G.style_channels)
    flat = soat.flatten_styles(G.mean_styles())
    stored = Generator(G.backend, G.config, G.fixed_noise, mean_styles=flat)
    assert stored.mean_source == "stored in the export" and torch.equal(soat.flatten_styles(stored.mean_styles()), flat)
    for bad, needle in ((torch.zeros(1, total + 1), f"finite \\[1, {total}\\]"),
                        (torch.full((1, total), float("nan")), "NaN or inf")):
        with pytest.raises(soat.SoatError, match=needle):
            Generator(G.backend, G.config, G.fixed_noise, mean_styles=bad)


# ---- the sampled truncation centre and warm-up ------------------------------------------------------

def test_sampled_centre_is_computed_once_per_model_backend_and_precision(tmp_path, monkeypatch):
    from soat.runtime import generator, styles
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(styles, "MEAN_STYLE_SAMPLES", 300)  # a cheap centre (the file's key names the count)
    want = soat.flatten_styles(soat.load("random:4", size=8, channel_multiplier=1).mean_styles())
    (kept,) = (tmp_path / "mean_w").iterdir()

    def resample(*args, **kwargs):
        raise AssertionError("sampled again")
    with monkeypatch.context() as m:
        m.setattr(generator, "mean_w", resample)
        again = soat.load("random:4", size=8, channel_multiplier=1)
        assert torch.equal(soat.flatten_styles(again.mean_styles()), want) and again.mean_source == "sampled"
    soat.load("random:4", size=8, channel_multiplier=1, backend="fast").mean_styles()  # another backend: its own
    assert len(list((tmp_path / "mean_w").iterdir())) == 2
    kept.write_bytes(b"not an array")  # a broken file is sampled again, to the same bits
    assert torch.equal(soat.flatten_styles(soat.load("random:4", size=8, channel_multiplier=1).mean_styles()), want)
    monkeypatch.setenv("SOAT_CACHE_DIR", str(kept))  # a cache that cannot be written costs time, never a result
    assert torch.equal(soat.flatten_styles(soat.load("random:4", size=8, channel_multiplier=1).mean_styles()), want)


def test_the_exporter_reads_the_centre_the_torch_backend_kept(tmp_path, monkeypatch):
    """An export of a model the torch backend (fp32, CPU) has centred stores that centre without sampling again."""
    import numpy as np

    from soat.export import folder
    from soat.runtime import styles
    from soat.runtime.sources import load_weights
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(styles, "MEAN_STYLE_SAMPLES", 300)
    want = soat.flatten_styles(soat.load("random:5", size=8, channel_multiplier=1).mean_styles())

    def resample(*args, **kwargs):
        raise AssertionError("sampled again")
    monkeypatch.setattr(folder, "mean_w", resample)
    weights, fingerprint = load_weights("random:5", 8, 1)
    folder.write_mean_styles(weights, fingerprint, str(tmp_path / "m.npz"))
    assert rel_err(torch.from_numpy(np.load(tmp_path / "m.npz")["mean_styles"]), want) <= 1e-6


def test_warmup_off_cuda_checks_its_arguments_and_runs_nothing(monkeypatch):
    G = soat.load("random:4", size=8, channel_multiplier=1)

    def ran(*args, **kwargs):
        raise AssertionError("warmup ran something on the CPU")
    monkeypatch.setattr(G, "generate", ran)
    monkeypatch.setattr(G, "mean_styles", ran)
    G.warmup("generate", batch=8)
    with pytest.raises(soat.SoatError, match="task='panorama' cannot be warmed up"):
        G.warmup("panorama")
    with pytest.raises(soat.SoatError, match="batch=0"):
        G.warmup("generate", batch=0)
