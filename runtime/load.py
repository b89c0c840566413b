"""``soat.load``: one entry point from a checkpoint, an export folder or the embedded default."""

from __future__ import annotations

import os

import torch

from ..errors import SoatError
from ..export.cache import cached_export
from .backends.aoti_backend import AOTI_DTYPES, AotiBackend, check_aoti_source
from .backends.fast_backend import FastTorchBackend
from .backends.ort_backend import OrtBackend
from .backends.torch_backend import TorchBackend
from .backends.trt_backend import TensorRTBackend
from .generator import Generator
from .manifest import check_format, check_matches, load_mean_styles, load_noise, read_manifest
from .sources import load_weights

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
WEIGHT_BACKENDS = ("torch", "fast")  # run a checkpoint's weights in torch
EXPORT_BACKENDS = ("onnxruntime", "tensorrt", "aoti")  # run an export folder's graphs
BACKENDS = ("auto", *WEIGHT_BACKENDS, *EXPORT_BACKENDS)
EXPORT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16"}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise SoatError(f"dtype={dtype!r} is not supported; use one of fp32, fp16, bf16")


def parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SoatError(f"device={device!r} is not a device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SoatError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise SoatError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def resolve_backend(backend: str, dtype: str | torch.dtype) -> str:
    """The backend ``auto`` stands for: ``fast`` for fp16/bf16, ``torch`` (the reference) for fp32."""
    if backend != "auto":
        return backend
    return "torch" if parse_dtype(dtype) == torch.float32 else "fast"


def load(source: str | os.PathLike = "random", backend: str = "auto", device: str | torch.device = "cpu",
         dtype: str | torch.dtype = "fp32", size: int | None = None,
         channel_multiplier: int | None = None, graphs: bool = True) -> Generator:
    """Load a generator.

    Args:
        source: a rosinality/SOAT checkpoint (``{"g_ema": state_dict}``), an NVIDIA StyleGAN2
            ``.pkl`` (read without running code), a soat ``.safetensors`` file, an export folder
            (``soat export``), or ``"random"`` / ``"random:SEED"`` for the embedded seeded model.
        backend: ``torch`` (the reference arithmetic), ``fast`` (shared-weight convs and fused
            Triton layer kernels), ``auto`` (``fast`` for fp16/bf16, ``torch`` for fp32),
            ``onnxruntime`` or ``tensorrt`` (an export folder; a checkpoint is exported into the
            cache first).
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        size, channel_multiplier: the layout; inferred from a checkpoint (given values are
            checked against it), defaults 256 and 2 for the random model.
        graphs: on CUDA (torch and fast backends), replay each task call from a CUDA graph
            captured per input signature; with ``onnxruntime``, replay each graph from ONNX
            Runtime's own CUDA graph per input shapes. ``False`` runs every call eagerly. The
            first call of a new shape or argument value is slower (warm-up and capture; ``G.warmup``).
    Returns:
        A ``Generator``.
    """
    if backend not in BACKENDS:
        raise SoatError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    dev, dt = parse_device(device), parse_dtype(dtype)
    source = os.fspath(source)
    if not isinstance(graphs, bool):
        raise SoatError(f"graphs={graphs!r} must be True or False")
    if backend in EXPORT_BACKENDS:
        return _load_export(source, backend, dev, dt, size, channel_multiplier, graphs)
    weights, fingerprint = load_weights(source, size, channel_multiplier)
    noise = weights.fixed_noise()
    backend_class = TorchBackend if resolve_backend(backend, dt) == "torch" else FastTorchBackend
    runner = backend_class(weights, dev, dt)
    return Generator(runner, weights.config, noise, source, fingerprint, graphs, w_avg=weights.w_avg)


def _load_export(source: str, backend: str, device: torch.device, dtype: torch.dtype, size: int | None,
                 channel_multiplier: int | None, graphs: bool) -> Generator:
    """A Generator whose graphs run on ``backend`` from an export folder (or a checkpoint exported into the cache)."""
    dtype_name = (AOTI_DTYPES if backend == "aoti" else EXPORT_DTYPES).get(dtype)
    if dtype_name is None:
        raise SoatError(f"dtype={str(dtype).replace('torch.', '')} is not available with backend={backend!r}; "
                        "exports are fp32 or fp16")
    if backend == "aoti":
        check_aoti_source(source)
    folder = source if os.path.isdir(source) else cached_export(source, dtype_name, size, channel_multiplier)
    manifest = read_manifest(folder)
    check_matches(manifest, dtype_name, size, channel_multiplier)
    check_format(manifest, backend)
    if backend == "onnxruntime":
        runner = OrtBackend(manifest, device, dtype, graphs)  # ONNX Runtime's own CUDA graphs, per node
    elif backend == "aoti":
        runner = AotiBackend(manifest, device, dtype)
    else:
        runner = TensorRTBackend(manifest, device, dtype)  # engines under <export>/engines
    # the mean styles stored at export (aoti), where there are: truncation needs no sampling
    return Generator(runner, manifest.config, load_noise(manifest), source, manifest.source["fingerprint"],
                     mean_styles=load_mean_styles(manifest))
