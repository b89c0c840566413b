"""The two tables every path reads: the precisions and the backends.

A precision's names, its torch and NumPy types, the export formats that take it and the backends
that run it; a backend's name, what it runs (a checkpoint's weights or an export folder), whether
its outputs carry gradients, whether its CUDA work can be captured into a CUDA graph, and its
devices. ``soat.load``, the exporters, the manifest checks, the CLI's choices and help texts and
the backends' own attributes come from here; tests check the README and libsoat against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SoatError

ONNX_FORMAT, AOTI_FORMAT = "onnx", "aoti"  # graph formats of an export folder
WEIGHTS, EXPORT = "weights", "export"  # what a backend runs


@dataclass(frozen=True)
class Precision:
    """A precision: the name manifests and the CLI use, other accepted spellings, its types, and where it runs."""

    name: str
    aliases: tuple[str, ...]
    torch_dtype: torch.dtype
    numpy_dtype: type | None  # None: NumPy has no such type (bf16); graph I/O never crosses as NumPy then
    export_formats: tuple[str, ...]
    backends: tuple[str, ...]


@dataclass(frozen=True)
class BackendSpec:
    """A backend: ``soat.load(backend=name)``.

    Attributes:
        runs: ``weights`` (a checkpoint's, in torch) or ``export`` (an export folder's graphs).
        graph_format: the export format it runs (None for weight backends).
        differentiable: outputs carry autograd history to inputs that require grad.
        capturable: its CUDA work can be captured into a CUDA graph on torch's current stream.
        devices: device types it runs on.
        summary: one line for help texts and the README.
    """

    name: str
    runs: str
    graph_format: str | None
    differentiable: bool
    capturable: bool
    devices: tuple[str, ...]
    summary: str


PRECISIONS: tuple[Precision, ...] = (
    Precision("fp32", ("float32",), torch.float32, np.float32, (ONNX_FORMAT, AOTI_FORMAT),
              ("torch", "fast", "onnxruntime", "tensorrt", "aoti")),
    Precision("fp16", ("float16",), torch.float16, np.float16, (ONNX_FORMAT, AOTI_FORMAT),
              ("torch", "fast", "onnxruntime", "tensorrt", "aoti")),
    Precision("bf16", ("bfloat16",), torch.bfloat16, None, (AOTI_FORMAT,), ("torch", "fast", "aoti")),
)

BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("torch", WEIGHTS, None, True, True, ("cpu", "cuda"), "the reference arithmetic in plain torch"),
    BackendSpec("fast", WEIGHTS, None, True, True, ("cpu", "cuda"),
                "shared-weight convs and fused Triton layer kernels (torch references off CUDA)"),
    BackendSpec("onnxruntime", EXPORT, ONNX_FORMAT, False, False, ("cpu", "cuda"),
                "an ONNX export on ONNX Runtime (its own CUDA graphs per node)"),
    BackendSpec("tensorrt", EXPORT, ONNX_FORMAT, False, False, ("cuda",),
                "TensorRT (or TensorRT for RTX) engines built from an ONNX export"),
    BackendSpec("aoti", EXPORT, AOTI_FORMAT, False, True, ("cpu", "cuda"),
                "an AOTInductor export (per-graph .pt2 packages), also run by libsoat in C++"),
)
AUTO = "auto"  # soat.load's default: fast for fp16/bf16, torch for fp32

BACKEND_NAMES = tuple(b.name for b in BACKENDS)
BACKEND_CHOICES = (AUTO, *BACKEND_NAMES)
WEIGHT_BACKENDS = tuple(b.name for b in BACKENDS if b.runs == WEIGHTS)
EXPORT_BACKENDS = tuple(b.name for b in BACKENDS if b.runs == EXPORT)
PRECISION_NAMES = tuple(p.name for p in PRECISIONS)


def backend_spec(name: str) -> BackendSpec:
    """The table row of a backend name (``auto`` is resolved by ``soat.load`` first)."""
    for spec in BACKENDS:
        if spec.name == name:
            return spec
    raise SoatError(f"backend={name!r} is unknown; use one of {', '.join(BACKEND_CHOICES)}")


def precision(value: str | torch.dtype) -> Precision:
    """The precision a name, alias or torch dtype stands for."""
    for p in PRECISIONS:
        if value == p.torch_dtype or (isinstance(value, str) and value in (p.name, *p.aliases)):
            return p
    raise SoatError(f"dtype={value!r} is not supported; use one of {', '.join(PRECISION_NAMES)}")


def export_precisions(graph_format: str) -> tuple[str, ...]:
    """The precision names an export format takes."""
    return tuple(p.name for p in PRECISIONS if graph_format in p.export_formats)


def check_runs(backend: str, dtype: torch.dtype) -> Precision:
    """The precision of ``dtype``, refused where ``backend`` does not run it."""
    p = precision(dtype)
    if backend not in p.backends:
        takes = " or ".join(q.name for q in PRECISIONS if backend in q.backends)
        spec = backend_spec(backend)
        what = f"its {spec.graph_format} exports are" if spec.graph_format else "it runs"
        raise SoatError(f"dtype={p.name} is not available with backend={backend!r}; {what} {takes}")
    return p
