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

import hashlib
import inspect
import os
import warnings
from typing import Sequence

import torch
from tqdm import tqdm

from ..errors import SoatError
from .. import version
from ..runtime.config import GeneratorConfig
from ..runtime.files import file_sha256
from ..runtime.generator import Generator
from ..runtime.graph_modules import graph_module
from ..runtime.capabilities import ONNX_FORMAT, export_precisions, precision
from ..runtime.graphs import example_shapes, graph_ids, graph_io, onnx_outputs, signature
from ..runtime.manifest import ANY_DEVICE, FORMAT_VERSION, GRAPH_ID_KEY
from .folder import Source, atomic_folder, finish_folder, resolve_source

MIN_OPSET, MAX_OPSET = 17, 20  # 20 is the TorchScript exporter's newest opset (torch 2.4 ... 2.13)
DEFAULT_OPSET = 17
# torch < 2.5 has no ``dynamo`` argument and always uses the TorchScript exporter
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export(source: str | os.PathLike | Generator, out_dir: str | os.PathLike, dtype: str = "fp32",
           opset: int = DEFAULT_OPSET, progress: bool = True, size: int | None = None,
           channel_multiplier: int | None = None) -> str:
    """Export a generator to ``out_dir``: one ONNX graph per chain node, ``mapping``, ``styles``,
    ``noise.npz``, ``mean_styles.npz`` and ``manifest.json``.

    Args:
        source: a checkpoint path, ``"random[:SEED]"``, or a ``Generator`` on the torch or fast backend.
        out_dir: the export folder, written under a temporary name and swapped into place; an existing
            export there is replaced as a whole, any other non-empty folder is refused.
        dtype: ``fp32`` or ``fp16`` (weights and every graph input/output).
        opset: ONNX opset, 17 to 20.
        progress: show a progress bar over the graphs.
        size, channel_multiplier: layout of a ``random`` source (checked against a checkpoint).
    Returns:
        The path of ``manifest.json``.
    """
    check_export_args(dtype, opset)
    _import_onnx()  # before anything is read or written
    resolved = resolve_source(source, size, channel_multiplier)
    with atomic_folder(out_dir) as tmp:
        export_source(resolved, tmp, dtype, opset, progress)
    return os.path.join(os.path.abspath(os.fspath(out_dir)), "manifest.json")


def export_source(source: Source, folder: str, dtype: str = "fp32", opset: int = DEFAULT_OPSET,
                  progress: bool = True) -> str:
    """Write the ONNX export of ``source`` into the (new, empty) ``folder``; the export cache and ``export``
    call this inside their own temporary folders."""
    check_export_args(dtype, opset)
    config = source.weights.config
    graph_sha, torch_dtype = {}, precision(dtype).torch_dtype
    for gid in tqdm(graph_ids(config), desc="export", unit="graph", disable=not progress):
        path = os.path.join(folder, f"{gid}.onnx")
        module = graph_module(source.weights, gid).to(device="cpu", dtype=torch_dtype).eval()
        _export_graph(module, config, gid, path, torch_dtype, opset)
        graph_sha[gid] = file_sha256(path)
    return finish_folder(folder, source, ONNX_FORMAT, dtype, opset, ANY_DEVICE, graph_sha)


def check_export_args(dtype: str, opset: int) -> None:
    if dtype not in export_precisions(ONNX_FORMAT):
        raise SoatError(f"dtype={dtype!r} cannot be exported; use one of {', '.join(export_precisions(ONNX_FORMAT))}")
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SoatError(f"opset={opset!r} is not supported; use an integer from {MIN_OPSET} to {MAX_OPSET}")


def cache_key(fingerprint: str, dtype: str, opset: int) -> str:
    """The export cache's folder name: sha256 of the source fingerprint, dtype, opset and exporter version."""
    text = "\n".join([fingerprint, dtype, str(opset), version.__version__, str(FORMAT_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()


def _export_graph(module: torch.nn.Module, config: GeneratorConfig, graph_id: str, path: str,
                  dtype: torch.dtype, opset: int) -> None:
    """Trace one graph module to ``path``, then pin its I/O signature and run the ONNX checker."""
    onnx = _import_onnx()
    inputs = graph_io(config, graph_id)[0]
    outputs = onnx_outputs(config, graph_id)
    shapes = example_shapes(config, graph_id)
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(shapes[name], generator=gen).to(dtype) for name in inputs)
    dims = {k: v for part in signature(config, graph_id, ONNX_FORMAT) for k, v in part.items()}  # names differ
    axes = {name: {i: d for i, d in enumerate(shape) if isinstance(d, str)} for name, shape in dims.items()}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript (see module doc);
        # tracer warnings are about weight shapes read as Python numbers, which are static here
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, path, input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, **_TORCHSCRIPT)
    model = onnx.load(path)
    for value in [*model.graph.input, *model.graph.output]:
        _set_shape(value, dims[value.name])
    onnx.helper.set_model_props(model, {GRAPH_ID_KEY: graph_id})
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise SoatError("export needs the onnx package: pip install 'soat[onnx]' (or pip install onnx)") from None
    return onnx


def _set_shape(value, dims: Sequence[int | str]) -> None:
    """Annotate a graph input/output with its signature (``graphs.signature``): symbols on the dynamic axes,
    numbers elsewhere.

    The tracer leaves generated names where it could not follow a shape (the constant's
    channels); pinning them keeps every signature exact for ORT and TensorRT's parser.
    """
    shape = value.type.tensor_type.shape.dim
    del shape[:]
    for d in dims:
        dim = shape.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
