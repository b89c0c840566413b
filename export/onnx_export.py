"""``soat.export.export``: split a generator into per-layer ONNX graphs with feature I/O.

Each graph is a small module from ``runtime/graph_modules.py`` traced by PyTorch's
TorchScript ONNX exporter (``dynamo=False``; deprecated since torch 2.9 but present
through 2.13): it takes ``dynamic_axes`` directly, needs no extra packages, and gives
plain graphs of standard ops (Conv, ConvTranspose, MatMul, Mul, Add, LeakyRelu, ...)
with the weights as initializers. The dynamo exporter (the default since 2.9) needs
``onnxscript`` and ``torch.export`` dynamic-shape specs, and its graphs change more
between torch releases.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import shutil
import tempfile
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SoatError
from .. import version
from ..runtime.backends.fast_backend import FastTorchBackend
from ..runtime.backends.torch_backend import TorchBackend
from ..runtime.checkpoint import file_sha256
from ..runtime.config import GeneratorConfig
from ..runtime.generator import Generator
from ..runtime.graph_modules import graph_module
from ..runtime.graphs import dynamic_axes, example_shapes, graph_ids, graph_io, onnx_outputs, output_shape
from ..runtime.manifest import DTYPES, FORMAT_VERSION, MANIFEST, NOISE_FILE, build_manifest, write_manifest
from ..runtime.sources import load_weights
from ..runtime.weights import StyleGAN2Weights

MIN_OPSET, MAX_OPSET = 17, 20  # 20 is the TorchScript exporter's newest opset (torch 2.4 ... 2.13)
DEFAULT_OPSET = 17
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# torch < 2.5 has no ``dynamo`` argument and always uses the TorchScript exporter
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def exporter_version() -> str:
    return version.__version__


def export(source: str | os.PathLike | Generator, out_dir: str | os.PathLike, dtype: str = "fp32",
           opset: int = DEFAULT_OPSET, progress: bool = True, size: int | None = None,
           channel_multiplier: int | None = None) -> str:
    """Export a generator to ``out_dir``: one ONNX graph per chain node, ``mapping``, ``styles``,
    ``noise.npz`` and ``manifest.json``.

    Args:
        source: a checkpoint path, ``"random[:SEED]"``, or a ``Generator`` on the torch or fast backend.
        out_dir: the export folder (created if needed; files of the same names are replaced).
        dtype: ``fp32`` or ``fp16`` (weights and every graph input/output).
        opset: ONNX opset, 17 to 20.
        progress: show a progress bar over the graphs.
        size, channel_multiplier: layout of a ``random`` source (checked against a checkpoint).
    Returns:
        The path of ``manifest.json``.
    """
    weights, noise, name, fingerprint = _resolve(source, size, channel_multiplier)
    return export_weights(weights, noise, name, fingerprint, os.fspath(out_dir), dtype, opset, progress)


def export_weights(weights: StyleGAN2Weights, fixed_noise: Sequence[torch.Tensor], source_name: str,
                   fingerprint: str, out_dir: str, dtype: str = "fp32", opset: int = DEFAULT_OPSET,
                   progress: bool = True) -> str:
    """``export`` for weights already in hand (the backends' export cache calls this)."""
    check_export_args(dtype, opset)
    config = weights.config
    os.makedirs(out_dir, exist_ok=True)
    graph_sha = {}
    for gid in tqdm(graph_ids(config), desc="export", unit="graph", disable=not progress):
        path = os.path.join(out_dir, f"{gid}.onnx")
        module = graph_module(weights, gid).to(device="cpu", dtype=TORCH_DTYPES[dtype]).eval()
        _export_graph(module, config, gid, path, TORCH_DTYPES[dtype], opset)
        graph_sha[gid] = file_sha256(path)
    noise_sha, noise_shapes = _write_noise(fixed_noise, os.path.join(out_dir, NOISE_FILE))
    exporter = {"soat": exporter_version(), "torch": torch.__version__}
    manifest = build_manifest(config, dtype, opset, {"name": source_name, "fingerprint": fingerprint},
                              graph_sha, noise_sha, noise_shapes, exporter)
    return write_manifest(out_dir, manifest)


def check_export_args(dtype: str, opset: int) -> None:
    if dtype not in DTYPES:
        raise SoatError(f"dtype={dtype!r} cannot be exported; use one of {', '.join(DTYPES)}")
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SoatError(f"opset={opset!r} is not supported; use an integer from {MIN_OPSET} to {MAX_OPSET}")


def cache_key(fingerprint: str, dtype: str, opset: int) -> str:
    """The export cache's folder name: sha256 of the source fingerprint, dtype, opset and exporter version."""
    text = "\n".join([fingerprint, dtype, str(opset), exporter_version(), str(FORMAT_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def atomic_folder(out_dir: str) -> Iterator[str]:
    """Write an export folder atomically: yields a temporary sibling folder, renamed to ``out_dir`` when the
    block succeeds (and removed when it fails). An existing export (or empty folder) at ``out_dir`` is replaced
    as a whole; any other non-empty folder is refused rather than deleted."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not _replaceable(out_dir):
        raise SoatError(f"{out_dir!r} exists and is not an export folder (no {MANIFEST}); choose another -o")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old.", dir=parent)
            os.replace(out_dir, os.path.join(old, "export"))
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replaceable(folder: str) -> bool:
    return os.path.isdir(folder) and (not os.listdir(folder) or os.path.isfile(os.path.join(folder, MANIFEST)))


def _resolve(source, size: int | None, channel_multiplier: int | None):
    """``(weights, fixed noise, source name, fingerprint)`` of an export source."""
    if isinstance(source, Generator):
        if not isinstance(source.backend, (TorchBackend, FastTorchBackend)):
            raise SoatError(f"export needs a Generator that holds its weights (torch or fast backend; this one runs "
                            f"on {source.backend.name}); pass its checkpoint path instead")
        return source.backend.weights, source.fixed_noise, source.source, source.fingerprint
    if not isinstance(source, (str, os.PathLike)):
        raise SoatError(f"source={source!r} must be a checkpoint path, 'random[:SEED]' or a torch/fast-backend "
                        "Generator")
    name = os.fspath(source)
    weights, fingerprint = load_weights(name, size, channel_multiplier)
    return weights, weights.fixed_noise(), name, fingerprint


def _export_graph(module: torch.nn.Module, config: GeneratorConfig, graph_id: str, path: str,
                  dtype: torch.dtype, opset: int) -> None:
    """Trace one graph module to ``path``, then pin its I/O signature and run the ONNX checker."""
    onnx = _import_onnx()
    inputs = graph_io(config, graph_id)[0]
    outputs = onnx_outputs(config, graph_id)
    shapes = example_shapes(config, graph_id)
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(shapes[name], generator=gen).to(dtype) for name in inputs)
    axes = dynamic_axes(config, graph_id)
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript (see module doc);
        # tracer warnings are about weight shapes read as Python numbers, which are static here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, path, input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, **_TORCHSCRIPT)
    model = onnx.load(path)
    shapes[outputs[0]] = output_shape(config, graph_id, shapes)
    for value in [*model.graph.input, *model.graph.output]:
        _set_shape(value, shapes[value.name], axes[value.name])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise SoatError("export needs the onnx package: pip install 'soat[onnx]' (or pip install onnx)") from None
    return onnx


def _set_shape(value, shape: Sequence[int], axes: dict[int, str]) -> None:
    """Annotate a graph input/output: named symbols on the dynamic axes, numbers elsewhere.

    The tracer leaves generated names where it could not follow a shape (the constant's
    channels); pinning them keeps every signature exact for ORT and TensorRT's parser.
    """
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for i, size in enumerate(shape):
        dim = dims.add()
        if i in axes:
            dim.dim_param = axes[i]
        else:
            dim.dim_value = size


def _write_noise(noise: Sequence[torch.Tensor], path: str) -> tuple[str, list[list[int]]]:
    """Fixed noise as fp32 ``noise_{i}`` arrays in an ``.npz`` (read back with ``allow_pickle=False``)."""
    arrays = {f"noise_{i}": n.detach().to("cpu", torch.float32).numpy() for i, n in enumerate(noise)}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return file_sha256(path), [list(a.shape) for a in arrays.values()]
