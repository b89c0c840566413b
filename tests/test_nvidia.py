"""NVIDIA StyleGAN2 pickles and the soat safetensors format (issue 9).

The pickles are written here in stylegan2-ada-pytorch's layout: ``{"G", "D", "G_ema", ...}``
of ``torch_utils.persistence`` objects, each pickled as ``_reconstruct_persistent_obj(meta)``
with the module source and its ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``,
attributes such as numpy ``weight_gain``), parameters named and scaled as NVIDIA's
``Generator`` holds them. Stand-in modules ``torch_utils.persistence`` and ``dnnlib.util``
are registered in ``sys.modules`` only while the file is written. The loaded model is
checked two ways: against the same weights in rosinality's format, and against a forward
pass written here from NVIDIA's formulas (gains where NVIDIA applies them).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import soat
from soat.runtime.random_model import random_weights
from soat.runtime.config import GeneratorConfig
from soat.runtime.sources import convert
from conftest import make_styles, rel_err

MARKER = "soat-test-executed-marker"
# NVIDIA's loader would exec() this; soat must not (the test checks the marker is never written).
MODULE_SRC = f"import pathlib\npathlib.Path({MARKER!r}).touch()\n"
FILTER = torch.outer(torch.tensor([1.0, 3.0, 3.0, 1.0]), torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64.0  # setup_filter


# ---- writing NVIDIA-layout pickles --------------------------------------------------------------------

def _reconstruct_persistent_obj(meta):
    raise AssertionError("NVIDIA's loader must never run in these tests")


class EasyDict(dict):
    pass


class Persistent:
    """Pickles as ``torch_utils.persistence`` does: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, **attrs):
        self.class_name = class_name
        self.state = {"training": False, "_parameters": OrderedDict(params or {}),
                      "_buffers": OrderedDict(buffers or {}), "_non_persistent_buffers_set": set(),
                      "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
                      "_forward_pre_hooks": OrderedDict(), "_modules": OrderedDict(modules or {}), **attrs}

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=MODULE_SRC, class_name=self.class_name, state=self.state)
        return _reconstruct_persistent_obj, (meta,)


@pytest.fixture
def nvidia_modules(monkeypatch):
    """Register the stand-ins under NVIDIA's module names, so pickle writes those names."""
    register_nvidia_modules(monkeypatch)


def register_nvidia_modules(monkeypatch) -> None:
    """The ``nvidia_modules`` fixture's work, for writers outside this module (``pytest.MonkeyPatch``)."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    monkeypatch.setattr(_reconstruct_persistent_obj, "__module__", "torch_utils.persistence")
    monkeypatch.setattr(EasyDict, "__module__", "dnnlib.util")
    for name, mod in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, mod)


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.detach().clone(), requires_grad=False)


def nv_fc(weight, bias, lr_multiplier=1.0, activation="linear"):
    """FullyConnectedLayer: uses ``x (W * lr/sqrt(in))^T + b * lr``."""
    return Persistent("FullyConnectedLayer", {"weight": _param(weight), "bias": _param(bias)},
                      activation=activation, in_features=weight.shape[1], out_features=weight.shape[0],
                      weight_gain=lr_multiplier / np.sqrt(weight.shape[1]), bias_gain=lr_multiplier)


def nv_layer(conv, noise, resolution, up):
    """SynthesisLayer from a rosinality StyledConv: NVIDIA convolves with the raw weight, so it holds W/sqrt(fan_in)."""
    w = conv.conv.weight[0]
    mod = conv.conv.modulation
    return Persistent("SynthesisLayer",
                      {"weight": _param(w / math.sqrt(w[0].numel())), "noise_strength": _param(conv.noise.weight[0]),
                       "bias": _param(conv.activate.bias)},
                      {"resample_filter": FILTER.clone(), "noise_const": noise[0, 0].clone()},
                      {"affine": nv_fc(mod.weight, mod.bias)},
                      resolution=resolution, up=up, use_noise=True, activation="lrelu", conv_clamp=256, padding=1,
                      act_gain=np.sqrt(2))


def nv_torgb(rgb):
    """ToRGBLayer: its 1/sqrt(in) gain multiplies the styles, so the weight is rosinality's as stored."""
    w = rgb.conv.weight[0]
    mod = rgb.conv.modulation
    return Persistent("ToRGBLayer", {"weight": _param(w), "bias": _param(rgb.bias.reshape(3))}, None,
                      {"affine": nv_fc(mod.weight, mod.bias)}, conv_clamp=256,
                      weight_gain=1 / np.sqrt(w.shape[1]))


def nv_generator(weights, w_avg: torch.Tensor | None = None) -> Persistent:
    """An NVIDIA ``Generator`` (architecture 'skip') holding ``weights``' tensors; ``w_avg`` the mapping's
    running mean of w (zeros, as at the start of training, when not given)."""
    c = weights.config
    noise = weights.fixed_noise()
    fcs = {f"fc{i}": nv_fc(lin.weight, lin.bias, 0.01, "lrelu") for i, lin in enumerate(list(weights.style)[1:])}
    w_avg = torch.zeros(c.style_dim) if w_avg is None else w_avg
    mapping = Persistent("MappingNetwork", None, {"w_avg": w_avg.clone()}, fcs, z_dim=c.style_dim,
                         c_dim=0, w_dim=c.style_dim, num_ws=c.n_latent, num_layers=c.n_mlp, w_avg_beta=0.995)
    blocks = {"b4": Persistent("SynthesisBlock", {"const": _param(weights.input.input[0])},
                               {"resample_filter": FILTER.clone()},
                               {"conv1": nv_layer(weights.conv1, noise[0], 4, 1), "torgb": nv_torgb(weights.to_rgb1)},
                               in_channels=0, resolution=4, architecture="skip", is_last=c.size == 4)}
    for j in range(c.num_blocks):
        r = 8 * 2 ** j
        blocks[f"b{r}"] = Persistent(
            "SynthesisBlock", None, {"resample_filter": FILTER.clone()},
            {"conv0": nv_layer(weights.convs[2 * j], noise[1 + 2 * j], r, 2),
             "conv1": nv_layer(weights.convs[2 * j + 1], noise[2 + 2 * j], r, 1),
             "torgb": nv_torgb(weights.to_rgbs[j])},
            in_channels=weights.convs[2 * j].conv.weight.shape[2], resolution=r, architecture="skip",
            is_last=r == c.size)
    synthesis = Persistent("SynthesisNetwork", None, None, blocks, w_dim=c.style_dim, img_resolution=c.size,
                           block_resolutions=[4 * 2 ** j for j in range(c.num_blocks + 1)], num_ws=c.n_latent)
    kwargs = {"z_dim": c.style_dim, "c_dim": 0, "w_dim": c.style_dim, "img_resolution": c.size, "img_channels": 3}
    return Persistent("Generator", None, None, {"synthesis": synthesis, "mapping": mapping},
                      _init_args=(), _init_kwargs={**kwargs, "mapping_kwargs": EasyDict(num_layers=c.n_mlp),
                                                   "synthesis_kwargs": EasyDict(channel_base=16384, channel_max=512)},
                      num_ws=c.n_latent, **kwargs)


def write_pickle(path, g_ema, **extra) -> str:
    data = {"G": g_ema, "D": Persistent("Discriminator", {"w": _param(torch.ones(2))}, None, None,
                                        weight_gain=np.float32(0.5), block_resolutions=np.array([8, 4])),
            "G_ema": g_ema, "augment_pipe": None,
            "training_set_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", resolution=16),
            **extra}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=3)  # the protocol of NVIDIA's Python 3.7 snapshots
    return str(path)


# ---- NVIDIA's forward pass, written from their formulas ----------------------------------------------

def _t(obj, name):
    return obj.state["_parameters"].get(name, obj.state["_buffers"].get(name))


def _fc(obj, x, act):
    y = x @ (_t(obj, "weight") * obj.state["weight_gain"]).T + _t(obj, "bias") * obj.state["bias_gain"]
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y


def _upfirdn(x, up, pad, gain):
    """upfirdn2d with the [1,3,3,1] filter times ``gain``: zero insertion, padding, full-overlap filtering."""
    b, c, h, w = x.shape
    if up == 2:  # each sample followed by one zero, on both axes
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, 1, 0, 0, 0, 1)).reshape(b, c, 2 * h, 2 * w)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    out = F.conv2d(x.reshape(b * c, 1, *x.shape[2:]), (FILTER * gain)[None, None])
    return out.reshape(b, c, *out.shape[2:])


def _synthesis_layer(layer, x, w):
    """modulated_conv2d (demodulated, no weight gain) -> + noise_const * strength -> bias_act(lrelu, sqrt 2)."""
    styles = _fc(layer.state["_modules"]["affine"], w, False)
    wgt = _t(layer, "weight")[None] * styles[:, None, :, None, None]
    wgt = wgt * (wgt.square().sum([2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    b, i, h, wd = x.shape
    if layer.state["up"] == 2:  # transposed conv, stride 2, no flip; then the filter with gain 4, pad (1, 1)
        y = F.conv_transpose2d(x.reshape(1, b * i, h, wd), wgt.transpose(1, 2).reshape(b * i, -1, 3, 3), stride=2,
                               groups=b)
        y = _upfirdn(y.reshape(b, -1, *y.shape[2:]), 1, (1, 1), 4)
    else:
        y = F.conv2d(x.reshape(1, b * i, h, wd), wgt.reshape(-1, i, 3, 3), padding=1, groups=b).reshape(b, -1, h, wd)
    y = y + _t(layer, "noise_const") * _t(layer, "noise_strength")
    return F.leaky_relu(y + _t(layer, "bias")[None, :, None, None], 0.2) * math.sqrt(2)


def _torgb(layer, x, w):
    styles = _fc(layer.state["_modules"]["affine"], w, False) * layer.state["weight_gain"]
    wgt = _t(layer, "weight")[None] * styles[:, None, :, None, None]
    b, i, h, wd = x.shape
    y = F.conv2d(x.reshape(1, b * i, h, wd), wgt.reshape(-1, i, 1, 1), groups=b).reshape(b, 3, h, wd)
    return y + _t(layer, "bias")[None, :, None, None]


def nv_forward(g: Persistent, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
    """NVIDIA's G(z, truncation_psi=psi) with noise_mode='const', fp32 (conv_clamp is not reached).

    NVIDIA's MappingNetwork truncates every W+ entry (truncation_cutoff=None) as
    ``w_avg.lerp(w, psi)`` = ``w_avg + psi (w - w_avg)``; here every entry is the same w."""
    mods = g.state["_modules"]
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    for i in range(mods["mapping"].state["num_layers"]):
        x = _fc(mods["mapping"].state["_modules"][f"fc{i}"], x, True)
    if psi != 1:
        w_avg = _t(mods["mapping"], "w_avg")
        x = w_avg + psi * (x - w_avg)
    blocks = mods["synthesis"].state["_modules"]
    b4 = blocks["b4"].state["_modules"]
    h = _synthesis_layer(b4["conv1"], _t(blocks["b4"], "const")[None].repeat(z.shape[0], 1, 1, 1), x)
    img = _torgb(b4["torgb"], h, x)
    for name in list(blocks)[1:]:
        m = blocks[name].state["_modules"]
        h = _synthesis_layer(m["conv1"], _synthesis_layer(m["conv0"], h, x), x)
        img = _upfirdn(img, 2, (2, 1), 4) + _torgb(m["torgb"], h, x)
    return img


# ---- tests ---------------------------------------------------------------------------------------------

def make_nv_pickle(tmp_path, config: GeneratorConfig) -> tuple[str, str, Persistent]:
    """The same random weights as an NVIDIA pickle and as a rosinality checkpoint."""
    weights = random_weights(config, seed=7)
    torch.save({"g_ema": weights.state_dict()}, tmp_path / "rosinality.pt")
    g = nv_generator(weights)
    return write_pickle(tmp_path / "network-snapshot-000000.pkl", g), str(tmp_path / "rosinality.pt"), g


@pytest.fixture
def nv_pickle(tmp_path, nvidia_modules):
    return make_nv_pickle(tmp_path, GeneratorConfig(size=16, channel_multiplier=1))


# stylegan2-ada-pytorch's 'stylegan2' and 'paper*' configs map with 8 layers, 'auto' and 'cifar' with 2
@pytest.mark.parametrize("size, n_mlp", [(16, 8), (8, 2)])
def test_nvidia_pickle_equals_rosinality_and_nvidia_forward(tmp_path, nvidia_modules, monkeypatch, size, n_mlp):
    pkl, pt, g = make_nv_pickle(tmp_path, GeneratorConfig(size=size, channel_multiplier=1, n_mlp=n_mlp))
    monkeypatch.chdir(tmp_path)
    G = soat.load(pkl)
    ref = soat.load(pt)
    assert G.size == size and G.config.n_mlp == n_mlp
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        img = G.generate(G.styles(z))
        assert rel_err(img, ref.generate(ref.styles(z))) <= 1e-5
        assert rel_err(torch.cat(G.styles(z), 1), torch.cat(ref.styles(z), 1)) <= 1e-5
        assert rel_err(img, nv_forward(g, z).clamp(-1, 1)) <= 1e-5
    assert not os.path.exists(MARKER)  # the module source in the pickle never ran


def test_truncation_centres_on_the_snapshots_w_avg(tmp_path, nvidia_modules, monkeypatch):
    """Issue 18: psi-truncated images equal NVIDIA's, whose centre is the snapshot's w_avg (here far from the
    sampled mean); a checkpoint without one keeps the sampled mean, and ``mean_source`` says which."""
    config = GeneratorConfig(size=16, channel_multiplier=1)
    weights = random_weights(config, seed=7)
    w_avg = 3.0 * torch.randn(config.style_dim, generator=torch.Generator().manual_seed(5))
    g = nv_generator(weights, w_avg)
    pkl = write_pickle(tmp_path / "network-snapshot-000100.pkl", g)
    torch.save({"g_ema": weights.state_dict()}, tmp_path / "plain.pt")
    monkeypatch.chdir(tmp_path)
    G, plain = soat.load(pkl), soat.load(str(tmp_path / "plain.pt"))
    assert G.mean_source == "checkpoint w_avg" and plain.mean_source == "sampled"
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for psi in (0.5, 0.7, 1.0):
            expected = nv_forward(g, z, psi).clamp(-1, 1)
            assert rel_err(G.generate(G.styles(z, truncation=psi)), expected) <= 1e-5
        # the sampled mean (the previous behaviour, still the one for checkpoints without w_avg) is far off
        assert rel_err(plain.generate(plain.styles(z, truncation=0.5)), nv_forward(g, z, 0.5).clamp(-1, 1)) > 1e-2
    # soat convert keeps w_avg: the safetensors file truncates the same way
    _convert(pkl, str(tmp_path / "nv.safetensors"))
    S = soat.load(str(tmp_path / "nv.safetensors"))
    assert S.mean_source == "checkpoint w_avg"
    with torch.no_grad():
        assert torch.equal(S.generate(S.styles(z, truncation=0.7)), G.generate(G.styles(z, truncation=0.7)))
    # estimate_mean_styles is still the way to the reference's sampled mean
    G.estimate_mean_styles(torch.randn(256, 512, generator=torch.Generator().manual_seed(0)))
    assert G.mean_source == "sampled"


def test_nan_w_avg_and_bad_w_avg_are_refused(tmp_path, nvidia_modules):
    weights = random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=1)
    nan = torch.zeros(512)
    nan[7] = float("nan")
    with pytest.raises(soat.SoatError, match=r"tensor 'G_ema.mapping.w_avg' holds 1 NaN or inf value"):
        soat.load(write_pickle(tmp_path / "nan.pkl", nv_generator(weights, nan)))
    with pytest.raises(soat.SoatError, match=r"G_ema.mapping.w_avg must be a mean latent of 512 floats; got \[3\]"):
        soat.load(write_pickle(tmp_path / "short.pkl", nv_generator(weights, torch.zeros(3))))


def test_refuses_code_execution(tmp_path, nvidia_modules):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    g = nv_generator(random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=1))
    top = write_pickle(tmp_path / "top.pkl", g, extra=Payload())
    g.state["_modules"]["mapping"].state["hook"] = Payload()
    nested = write_pickle(tmp_path / "nested.pkl", g)
    for path in (top, nested):
        with pytest.raises(soat.SoatError, match=r"refers to (posix|nt)\.system, which would need code execution"):
            soat.load(path)
    assert not marker.exists()


def test_refuses_stylegan3_and_other_layouts(tmp_path, nvidia_modules):
    g = nv_generator(random_weights(GeneratorConfig(size=8, channel_multiplier=1), seed=1))
    synthesis = g.state["_modules"]["synthesis"]
    modules = synthesis.state["_modules"]
    saved = dict(modules)
    modules.clear()
    modules.update({"input": Persistent("SynthesisInput", None, {"freqs": torch.zeros(512, 2)}),
                    "L0_36_512": Persistent("SynthesisLayer")})
    with pytest.raises(soat.SoatError, match="StyleGAN3 generator"):
        soat.load(write_pickle(tmp_path / "sg3.pkl", g))
    modules.clear()
    modules.update(saved)
    modules["b8"].state["architecture"] = "resnet"
    with pytest.raises(soat.SoatError, match="architecture 'resnet'"):
        soat.load(write_pickle(tmp_path / "resnet.pkl", g))
    modules["b8"].state["architecture"] = "skip"
    g.state["c_dim"] = 10
    with pytest.raises(soat.SoatError, match="class-conditional"):
        soat.load(write_pickle(tmp_path / "cond.pkl", g))


def test_bad_pickles(tmp_path, nvidia_modules):
    with open(tmp_path / "nog.pkl", "wb") as f:
        pickle.dump({"G": 1}, f)
    with pytest.raises(soat.SoatError, match="no 'G_ema' network"):
        soat.load(str(tmp_path / "nog.pkl"))
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(soat.SoatError, match="not a readable NVIDIA network pickle"):
        soat.load(str(tmp_path / "junk.pkl"))
    good = write_pickle(tmp_path / "good.pkl", nv_generator(random_weights(GeneratorConfig(size=8), seed=1)))
    data = open(good, "rb").read()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(soat.SoatError, match="not a readable NVIDIA network pickle"):
        soat.load(str(tmp_path / "cut.pkl"))
    with pytest.raises(soat.SoatError, match="holds a 8px generator"):
        soat.load(good, size=16)
    odd = nv_generator(random_weights(GeneratorConfig(size=8), seed=1))
    odd.state["_modules"]["mapping"].state["_modules"] = ["fc0"]
    with pytest.raises(soat.SoatError, match="not a StyleGAN2 generator's"):
        soat.load(write_pickle(tmp_path / "odd.pkl", odd))


def test_legacy_torch_checkpoint_still_loads_as_rosinality(tmp_path, g8):
    sd = random_weights(g8.config, seed=8).state_dict()
    torch.save({"g_ema": sd}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    G = soat.load(str(tmp_path / "legacy.pt"))
    styles = make_styles(g8, 2, seed=1)
    with torch.no_grad():
        assert torch.equal(G.generate(styles), g8.generate(styles))


# ---- the soat safetensors format ----------------------------------------------------------------------

def _convert(source: str, output: str, size: int | None = None, channel_multiplier: int | None = None) -> None:
    """The library side of ``soat convert`` (the CLI's own tests are test_cli's)."""
    assert convert(source, output, size, channel_multiplier) == output


def test_safetensors_round_trip_keeps_images_and_fingerprint(tmp_path, g16, nv_pickle):
    _convert("random:16", str(tmp_path / "m.safetensors"), 16, 1)
    G = soat.load(str(tmp_path / "m.safetensors"))
    assert G.config == g16.config and G.fingerprint == g16.fingerprint
    styles = make_styles(g16, 2, seed=2)
    with torch.no_grad():
        assert torch.equal(G.generate(styles), g16.generate(styles))
    pkl = nv_pickle[0]
    _convert(pkl, str(tmp_path / "nv.safetensors"))
    from_pkl, converted = soat.load(pkl), soat.load(str(tmp_path / "nv.safetensors"))
    assert converted.fingerprint == from_pkl.fingerprint
    with torch.no_grad():
        assert torch.equal(converted.generate(styles), from_pkl.generate(styles))


def test_safetensors_errors(tmp_path):
    from safetensors.torch import save_file

    _convert("random:3", str(tmp_path / "m.safetensors"), 8)
    with pytest.raises(soat.SoatError, match="size=8 but size=16"):
        soat.load(str(tmp_path / "m.safetensors"), size=16)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(soat.SoatError, match="not a soat model"):
        soat.load(str(tmp_path / "foreign.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:1000])
    with pytest.raises(soat.SoatError, match="cannot read .*cut.safetensors"):
        soat.load(str(tmp_path / "cut.safetensors"))
    with pytest.raises(soat.SoatError, match="must end with .safetensors"):
        _convert("random:3", str(tmp_path / "m.pt"), 8)
