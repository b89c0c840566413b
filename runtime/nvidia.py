"""NVIDIA StyleGAN2 pickles (stylegan2-ada-pytorch, stylegan3's ``--cfg=stylegan2``), read without running code.

A ``network-snapshot-*.pkl`` is a plain pickle of ``{"G": ..., "D": ..., "G_ema": ..., ...}``
whose networks are ``torch_utils.persistence`` objects: each is stored as a call
``_reconstruct_persistent_obj(meta)``, where ``meta["module_src"]`` is the Python source of
the network module (which NVIDIA's loader executes) and ``meta["state"]`` the module's
``__dict__`` (``_parameters``, ``_buffers``, ``_modules`` and plain attributes). Here
``_SafeUnpickler`` maps that call onto ``PersistentState``, which keeps ``class_name`` and
``state`` and never looks at the source. Every other global a file names must be on
``_ALLOWED`` (tensor and storage rebuilding, plain containers, numeric numpy scalars and
arrays); anything else stops the load before it is called.

Parameter mapping onto rosinality keys (``b{r}`` is the block of resolution r, j = log2(r) - 3):

    mapping.fc{i}.{weight,bias}    -> style.{i+1}.*            rescaled from NVIDIA's weight/bias gains
    synthesis.b4.const [C, 4, 4]   -> input.input [1, C, 4, 4]
    synthesis.b4.conv1 / .torgb    -> conv1 / to_rgb1
    synthesis.b{r}.conv0/conv1/torgb -> convs.{2j} / convs.{2j+1} / to_rgbs.{j}
    *.affine.{weight,bias}         -> *.conv.modulation.*       (gains 1/sqrt(512) and 1, as rosinality's)
    conv weight [O, I, 3, 3]       -> *.conv.weight [1, O, I, 3, 3] * sqrt(9 I): NVIDIA convolves with the
                                      raw weight (demodulation cancels any gain), rosinality with W/sqrt(9 I)
    torgb weight [3, I, 1, 1]      -> to_rgb*.conv.weight: NVIDIA's 1/sqrt(I) gain multiplies the styles,
                                      rosinality's the weight; the product is the same
    noise_strength [], noise_const [r, r] -> *.noise.weight [1], noises.noise_{i} [1, 1, r, r]
    bias [O], torgb bias [3]       -> *.activate.bias, to_rgb*.bias [1, 3, 1, 1]

NVIDIA adds noise after the conv and before bias + leaky ReLU * sqrt(2), upsamples with the
same [1, 3, 3, 1] filter (checked) and normalises z by its second moment (= PixelNorm), so
the chain computes the same image. ``mapping.w_avg`` (NVIDIA's running mean of w) becomes
``StyleGAN2Weights.w_avg``: truncation then centres on affine(w_avg), which in sigma space is
NVIDIA's ``w_avg + psi (w - w_avg)``. Not carried over: ``conv_clamp`` (NVIDIA clamps
activations to +-256 for fp16 training; it changes nothing below that).

Before unpickling, the opcode stream is checked for structures nested too deep (they crash
CPython) or memo references that expand without bound (``checkpoint.check_pickle_structure``).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .checkpoint import (LAYOUT_RANGES, LEGACY_MAGIC, check_pickle_structure, infer_config,
                         mean_latent, weights_from_state_dict)
from .config import GeneratorConfig
from ..errors import SoatError
from .files import file_sha256
from ..triton_kernels.fir import NORMALISED_FILTER
from .weights import StyleGAN2Weights

_STYLEGAN3_LAYER = re.compile(r"^L\d+_")


class PersistentState:
    """An NVIDIA network as data: its class name and its ``__dict__`` (never its source code)."""

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state


class _Sealed(type):
    """Metaclass of the stand-in classes: a pickle's BUILD opcode cannot set attributes on them."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"the pickle tried to set {cls.__name__}.{name}")


class EasyDict(dict, metaclass=_Sealed):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict."""


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _reconstruct_persistent_obj(meta: Any) -> PersistentState:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise pickle.UnpicklingError("a persistent object without a class state")
    return PersistentState(str(meta.get("class_name")), meta["state"])


def _load_storage(data: Any) -> Any:
    # torch pickles a storage as torch.save(storage) bytes; weights_only keeps that inner load code-free.
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("a storage that is not bytes")
    check_pickle_structure(data, "a tensor storage in the pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notices
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    # requires_grad, hooks and metadata are dropped: the weights are read, never trained.
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("a tensor without a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


def _numeric_dtype(spec: Any, *_ignored: Any) -> np.dtype:
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"a numpy dtype {spec!r} that is not numeric")
    return dtype


def _numpy_scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not numeric")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's _reconstruct makes an empty array; the BUILD that follows fills it with a numeric dtype.
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, "b")


# The name numpy.ndarray resolves to this token, not to the class: a pickle cannot call the constructor.
_NDARRAY = "numpy.ndarray"
_NUMPY = {"scalar": _numpy_scalar, "_reconstruct": _numpy_array}
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{(mod, name): fn for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name, fn in _NUMPY.items()},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; any other name raises ``_Refused`` before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def is_nvidia_pickle(path: str) -> bool:
    """A plain pickle (not a torch zip nor a legacy torch.save file), or any ``.pkl`` file."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK") or LEGACY_MAGIC in head:
        return False
    return head.startswith(b"\x80") or path.lower().endswith(".pkl")


def read_pickle(path: str) -> Any:
    """Unpickle ``path`` with ``_SafeUnpickler``; every failure is a ``SoatError``."""
    check_pickle_structure(path, repr(path))
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f).load()
    except SoatError as e:  # from a storage's own check
        raise SoatError(f"{path!r}: {e}") from None
    except _Refused as e:
        hint = " (a TensorFlow StyleGAN pickle: convert it to PyTorch first, e.g. with stylegan2-ada-pytorch's " \
               "legacy.py or rosinality's convert_weight.py)" if e.name.startswith("dnnlib.tflib") else ""
        raise SoatError(f"{path!r} refers to {e.name}, which would need code execution to unpickle; refused{hint}. "
                        "Only NVIDIA StyleGAN2 network pickles (tensors, plain containers and network state) "
                        "are read") from None
    except OSError as e:
        raise SoatError(f"cannot read {path!r}: {e.strerror or e}") from None
    except Exception as e:  # untrusted bytes can fail anywhere in the unpickler; all of it means "bad file"
        raise SoatError(f"{path!r} is not a readable NVIDIA network pickle ({type(e).__name__}: {e}); "
                        "expected a stylegan2-ada-pytorch network-snapshot .pkl") from None


# ---- walking the network state -----------------------------------------------------------------

def _child(obj: PersistentState, name: str, where: str) -> PersistentState:
    child = obj.state.get("_modules", {}).get(name)
    if not isinstance(child, PersistentState):
        raise SoatError(f"{where}: network {obj.class_name} has no submodule {name!r}; "
                        "this is not a StyleGAN2 generator in stylegan2-ada-pytorch's layout")
    return child


def _tensor(obj: PersistentState, name: str, where: str) -> torch.Tensor:
    for table in ("_parameters", "_buffers"):
        t = obj.state.get(table, {}).get(name)
        if isinstance(t, torch.Tensor):
            return t.detach().float()
    raise SoatError(f"{where}: {obj.class_name} has no tensor {name!r}; "
                    "this is not a StyleGAN2 generator in stylegan2-ada-pytorch's layout")


def _number(obj: PersistentState, name: str, where: str) -> float:
    value = obj.state.get(name)
    if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
        raise SoatError(f"{where}: {obj.class_name}.{name} is missing or not a number ({value!r})")
    return float(value)


def _layer_count(mapping: PersistentState, where: str) -> int:
    """The mapping network's ``num_layers``: a whole number in ``LAYOUT_RANGES["n_mlp"]`` (not inf, not 10**9)."""
    value = _number(mapping, "num_layers", where)
    lo, hi = LAYOUT_RANGES["n_mlp"]
    if not (lo <= value <= hi and value == int(value)):
        raise SoatError(f"{where}: {mapping.class_name}.num_layers={value!r} is not a layer count of a StyleGAN2 "
                        f"mapping network ({lo} to {hi}); the file is corrupt or not a generator")
    return int(value)


def _linear(fc: PersistentState, ros_gain: float, ros_bias_gain: float,
            where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """NVIDIA ``FullyConnectedLayer`` (``x W^T g + b g_b``) as weights for a layer with gains ``ros_*``."""
    weight, bias = _tensor(fc, "weight", where), _tensor(fc, "bias", where)
    return (weight * (_number(fc, "weight_gain", where) / ros_gain),
            bias * (_number(fc, "bias_gain", where) / ros_bias_gain))


def _modulated(layer: PersistentState, prefix: str, where: str) -> dict[str, torch.Tensor]:
    """``conv.weight`` and ``conv.modulation.*`` of a SynthesisLayer or ToRGBLayer."""
    weight, affine = _tensor(layer, "weight", where), _child(layer, "affine", where)
    _, in_ch, k, _ = weight.shape
    ros_scale = 1.0 / math.sqrt(in_ch * k * k)
    style_dim = _tensor(affine, "weight", where).shape[1]
    mod_w, mod_b = _linear(affine, 1.0 / math.sqrt(style_dim), 1.0, where)
    # ToRGBLayer scales its styles by weight_gain; SynthesisLayer uses the raw weight (gain 1).
    gain = _number(layer, "weight_gain", where) if "weight_gain" in layer.state else 1.0
    return {f"{prefix}.conv.weight": (weight * (gain / ros_scale)).unsqueeze(0),
            f"{prefix}.conv.modulation.weight": mod_w, f"{prefix}.conv.modulation.bias": mod_b}


def _styled_conv(layer: PersistentState, prefix: str, noise_index: int, where: str) -> dict[str, torch.Tensor]:
    if layer.state.get("activation", "lrelu") != "lrelu":
        raise SoatError(f"{where}: {prefix} uses activation {layer.state['activation']!r}; StyleGAN2 uses 'lrelu'")
    if not torch.allclose(_tensor(layer, "resample_filter", where), NORMALISED_FILTER, atol=1e-6):
        raise SoatError(f"{where}: {prefix} resamples with a filter other than [1, 3, 3, 1], which this runtime "
                        "does not implement")
    noise = _tensor(layer, "noise_const", where)
    return {**_modulated(layer, prefix, where),
            f"{prefix}.noise.weight": _tensor(layer, "noise_strength", where).reshape(1),
            f"{prefix}.activate.bias": _tensor(layer, "bias", where),
            f"noises.noise_{noise_index}": noise.reshape(1, 1, *noise.shape)}


def _to_rgb(layer: PersistentState, prefix: str, where: str) -> dict[str, torch.Tensor]:
    return {**_modulated(layer, prefix, where), f"{prefix}.bias": _tensor(layer, "bias", where).reshape(1, -1, 1, 1)}


def _check_stylegan2(g: PersistentState, synthesis: PersistentState, where: str) -> list[int]:
    """The block resolutions ``[4, 8, ..., R]``, after refusing what this runtime cannot run."""
    children = list(synthesis.state.get("_modules", {}))
    if "input" in children or any(_STYLEGAN3_LAYER.match(c) for c in children):
        raise SoatError(f"{where} holds a StyleGAN3 generator (config T or R: Fourier-feature input and L* layers); "
                        "only StyleGAN2 generators are supported (stylegan2-ada-pytorch, or stylegan3 with "
                        "--cfg=stylegan2)")
    if g.state.get("c_dim", 0):
        raise SoatError(f"{where} holds a class-conditional generator (c_dim={g.state['c_dim']}); "
                        "only unconditional generators are supported")
    resolutions = sorted(int(c[1:]) for c in children if re.fullmatch(r"b\d+", c))
    if not resolutions or resolutions[0] != 4:
        raise SoatError(f"{where}: synthesis has no 4x4 block (found {children[:6]}); not a StyleGAN2 generator")
    for r in resolutions:
        arch = _child(synthesis, f"b{r}", where).state.get("architecture")
        if arch != "skip":
            raise SoatError(f"{where}: block b{r} has architecture {arch!r}; only StyleGAN2's 'skip' generator "
                            "is supported")
    return resolutions


def rosinality_state_dict(g: PersistentState, where: str) -> dict[str, torch.Tensor]:
    """Map an NVIDIA ``G_ema`` onto rosinality ``g_ema`` keys (see the module docstring)."""
    mapping, synthesis = _child(g, "mapping", where), _child(g, "synthesis", where)
    resolutions = _check_stylegan2(g, synthesis, where)
    sd: dict[str, torch.Tensor] = {}
    lr_mul = GeneratorConfig.lr_mlp
    for i in range(_layer_count(mapping, where)):
        fc = _child(mapping, f"fc{i}", where)
        in_dim = _tensor(fc, "weight", where).shape[1]
        sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"] = _linear(fc, lr_mul / math.sqrt(in_dim), lr_mul, where)
    b4 = _child(synthesis, "b4", where)
    sd["input.input"] = _tensor(b4, "const", where).unsqueeze(0)
    sd.update(_styled_conv(_child(b4, "conv1", where), "conv1", 0, where))
    sd.update(_to_rgb(_child(b4, "torgb", where), "to_rgb1", where))
    for j, r in enumerate(resolutions[1:]):
        block = _child(synthesis, f"b{r}", where)
        sd.update(_styled_conv(_child(block, "conv0", where), f"convs.{2 * j}", 1 + 2 * j, where))
        sd.update(_styled_conv(_child(block, "conv1", where), f"convs.{2 * j + 1}", 2 + 2 * j, where))
        sd.update(_to_rgb(_child(block, "torgb", where), f"to_rgbs.{j}", where))
    return sd


def load_nvidia(path: str, size: int | None = None,
                channel_multiplier: int | None = None) -> tuple[StyleGAN2Weights, str]:
    """Read ``G_ema`` from an NVIDIA StyleGAN2 pickle; returns the weights and the file's sha256."""
    data = read_pickle(path)
    g = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(g, PersistentState):
        found = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise SoatError(f"{path!r} has no 'G_ema' network (found {found}); expected a stylegan2-ada-pytorch "
                        "network-snapshot .pkl")
    try:
        sd = rosinality_state_dict(g, repr(path))
        mapping = _child(g, "mapping", repr(path))
        w_avg = mapping.state.get("_buffers", {}).get("w_avg")
    except SoatError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as e:
        # the state is the file's data: a malformed one is a bad file, not a bug here
        raise SoatError(f"{path!r}: G_ema's state is not a StyleGAN2 generator's ({type(e).__name__}: {e})") from None
    config = infer_config(sd, path, size, channel_multiplier)
    w_avg = mean_latent(w_avg, config.style_dim, "G_ema.mapping.w_avg", repr(path))
    return weights_from_state_dict(sd, config, path, w_avg), file_sha256(path)
