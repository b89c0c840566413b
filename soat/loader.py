"""``soat.load``: one entry point from a checkpoint, an export folder or the embedded default."""

from __future__ import annotations

import os
import warnings

import torch

from .errors import SoatError
from .export.cache import cached_export
from .runtime.backends.aoti_backend import AotiBackend, check_aoti_source
from .runtime.backends.fast_backend import FastTorchBackend
from .runtime.backends.ort_backend import OrtBackend
from .runtime.backends.torch_backend import TorchBackend
from .runtime.backends.trt_backend import TensorRTBackend
from .runtime.checks import check_device, check_source
from .runtime.config import check_layout
from .runtime.capabilities import AUTO, BACKEND_CHOICES, EXPORT_BACKENDS, backend_spec, check_runs, precision
from .runtime.generator import Generator
from .runtime.manifest import (Manifest, check_format, check_matches, export_backend, load_mean_styles, load_noise,
                               read_manifest)
from .runtime.sources import load_weights

_UNSET = object()


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype a precision name, alias or dtype stands for (``capabilities.PRECISIONS``)."""
    return precision(dtype).torch_dtype


def resolve_backend(backend: str, dtype: str | torch.dtype) -> str:
    """The backend ``auto`` stands for: ``fast`` for fp16/bf16, ``torch`` (the reference) for fp32."""
    if backend != AUTO:
        return backend
    return "torch" if parse_dtype(dtype) == torch.float32 else "fast"


def load(source: str | os.PathLike = "random", backend: str = AUTO, device: str | torch.device = "cpu",
         dtype: str | torch.dtype = "fp32", size: int | None = None,
         channel_multiplier: int | None = None, cuda_graphs: bool = True, graphs: object = _UNSET) -> Generator:
    """Load a generator.

    Args:
        source: a rosinality/SOAT checkpoint (``{"g_ema": state_dict}``), an NVIDIA StyleGAN2
            ``.pkl`` (read without running code), a soat ``.safetensors`` file, an export folder
            (``soat export``), or ``"random"`` / ``"random:SEED"`` for the embedded seeded model.
        backend: one of ``capabilities.BACKENDS`` (``torch``: the reference arithmetic, ``fast``:
            shared-weight convs and fused Triton layer kernels, ``onnxruntime`` / ``tensorrt``: an ONNX
            export folder, a checkpoint being exported into the cache first, ``aoti``: an AOTInductor
            export folder) or ``auto``: for an export folder the backend of the graph format its manifest
            states (``onnxruntime`` or ``aoti``), else ``fast`` for fp16/bf16 and ``torch`` for fp32.
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        size, channel_multiplier: the layout; inferred from a checkpoint (given values are
            checked against it), defaults 256 and 2 for the random model.
        cuda_graphs: on CUDA (torch, fast and aoti backends), replay each task call from a CUDA graph
            captured per input signature; with ``onnxruntime``, replay each graph from ONNX
            Runtime's own CUDA graph per input shapes. ``False`` runs every call eagerly. The
            first call of a new shape or argument value is slower (warm-up and capture; ``G.warmup``).
        graphs: the old name of ``cuda_graphs`` (deprecated).
    Returns:
        A ``Generator``.
    """
    if graphs is not _UNSET:
        warnings.warn("soat.load(graphs=...) is deprecated; use cuda_graphs=...", DeprecationWarning, stacklevel=2)
        cuda_graphs = graphs
    if backend not in BACKEND_CHOICES:
        backend_spec(backend)  # the error naming the choices
    source = check_source(source)
    check_layout(size, channel_multiplier)
    dev, dt = check_device(device), parse_dtype(dtype)
    if not isinstance(cuda_graphs, bool):
        raise SoatError(f"cuda_graphs={cuda_graphs!r} must be True or False")
    backend = resolve_backend(export_backend(source, backend), dt)
    check_runs(backend, dt)
    if backend in EXPORT_BACKENDS:
        return _load_export(source, backend, dev, dt, size, channel_multiplier, cuda_graphs)
    weights, fingerprint = load_weights(source, size, channel_multiplier)
    noise = weights.fixed_noise()
    backend_class = TorchBackend if backend == "torch" else FastTorchBackend
    runner = backend_class(weights, dev, dt)
    return Generator(runner, weights.config, noise, source, fingerprint, cuda_graphs, w_avg=weights.w_avg)


def _load_export(source: str, backend: str, device: torch.device, dtype: torch.dtype, size: int | None,
                 channel_multiplier: int | None, cuda_graphs: bool) -> Generator:
    """A Generator whose graphs run on ``backend`` from an export folder (or a checkpoint exported into the cache)."""
    dtype_name = precision(dtype).name
    if backend == "aoti":
        check_aoti_source(source)
    folder = source if os.path.isdir(source) else cached_export(source, dtype_name, size, channel_multiplier)
    manifest = read_manifest(folder)
    check_matches(manifest, dtype_name, size, channel_multiplier)
    check_format(manifest, backend)
    if backend == "onnxruntime":
        runner = OrtBackend(manifest, device, dtype, cuda_graphs)  # ONNX Runtime's own CUDA graphs, per node
    elif backend == "aoti":
        runner = AotiBackend(manifest, device, dtype)
    else:
        runner = TensorRTBackend(manifest, device, dtype)  # engines under <export>/engines
    return Generator(runner, manifest.config, load_noise(manifest), source, manifest.source["fingerprint"],
                     cuda_graphs, mean_styles=load_mean_styles(manifest), missing_mean=_missing_mean(manifest))


def _missing_mean(manifest: Manifest) -> str | None:
    """Why truncation cannot be centred on this export (it predates stored mean styles), or None."""
    if manifest.mean_styles is not None:
        return None
    return (f"export {manifest.folder!r} (manifest format {manifest.format_version}) stores no mean styles, so "
            "truncation has no centre that matches its checkpoint; re-export it with this soat "
            "(`soat export ... -o DIR --force`), or call G.estimate_mean_styles(z) to centre on sampled z")
