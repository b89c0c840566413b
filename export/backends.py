"""``load_exported``: a Generator on ONNX Runtime or TensorRT, from an export folder or a checkpoint.

A checkpoint (or ``random[:SEED]``) is exported once into a cache folder,
``$SOAT_CACHE_DIR/exports/<key>`` (default ``~/.cache/soat``), keyed by the source's
fingerprint, dtype, opset and exporter version, and reused while its manifest verifies.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import torch

from ..runtime.checkpoint import file_sha256
from ..errors import SoatError
from ..runtime.generator import Generator
from ..runtime.load import load_weights
from .manifest import Manifest, load_noise, read_manifest
from .onnx_export import DEFAULT_OPSET, cache_key, export_weights

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16"}


def cache_dir() -> str:
    """Root of soat's caches: ``$SOAT_CACHE_DIR``, else ``~/.cache/soat``."""
    return os.environ.get("SOAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "soat")


def load_exported(source: str, backend: str, device: torch.device, dtype: torch.dtype, size: int | None = None,
                  channel_multiplier: int | None = None) -> Generator:
    """A Generator whose graphs run on ``backend`` (``onnxruntime`` or ``tensorrt``).

    Args:
        source: an export folder, or a checkpoint / ``random[:SEED]`` to export into the cache first.
        device, dtype: as parsed by ``soat.load``; the export's dtype must be ``dtype``.
        size, channel_multiplier: checked against the export (or used for a random source).
    """
    dtype_name = DTYPE_NAMES.get(dtype)
    if dtype_name is None:
        raise SoatError(f"dtype={str(dtype).replace('torch.', '')} is not available with backend={backend!r}; "
                        "exports are fp32 or fp16")
    folder = source if os.path.isdir(source) else cached_export(source, dtype_name, size, channel_multiplier)
    manifest = read_manifest(folder)
    _check_matches(manifest, dtype_name, size, channel_multiplier)
    if backend == "onnxruntime":
        from .ort_backend import OrtBackend
        runner = OrtBackend(manifest, device, dtype)
    elif backend == "tensorrt":
        from .trt_backend import TensorRTBackend
        runner = TensorRTBackend(manifest, device, dtype, engine_dir=os.path.join(cache_dir(), "tensorrt"))
    else:
        raise SoatError(f"backend={backend!r} does not run exports; use 'onnxruntime' or 'tensorrt'")
    return Generator(runner, manifest.config, load_noise(manifest), source, manifest.source["fingerprint"])


def cached_export(source: str, dtype: str, size: int | None = None, channel_multiplier: int | None = None,
                  opset: int = DEFAULT_OPSET) -> str:
    """The cache folder holding ``source``'s export, made (atomically) when missing or invalid."""
    weights = None
    if os.path.isfile(source):
        fingerprint = file_sha256(source)  # load_checkpoint's fingerprint, without reading the weights
    else:
        weights, fingerprint = load_weights(source, size, channel_multiplier)
    folder = os.path.join(cache_dir(), "exports", cache_key(fingerprint, dtype, opset))
    if _is_valid(folder):
        return folder
    if weights is None:
        weights, fingerprint = load_weights(source, size, channel_multiplier)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(folder))
    try:
        export_weights(weights, weights.fixed_noise(), source, fingerprint, tmp, dtype, opset,
                       progress=sys.stderr.isatty())
        shutil.rmtree(folder, ignore_errors=True)  # an invalid leftover
        os.replace(tmp, folder)
    except OSError:
        if not _is_valid(folder):  # not another process that won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _is_valid(folder: str) -> bool:
    try:
        read_manifest(folder)
    except SoatError:
        return False
    return True


def _check_matches(manifest: Manifest, dtype: str, size: int | None, channel_multiplier: int | None) -> None:
    c = manifest.config
    if manifest.dtype != dtype:
        raise SoatError(f"export {manifest.folder!r} is {manifest.dtype} but dtype={dtype!r} was asked for; "
                        f"load it with dtype={manifest.dtype!r}, or export again with --dtype {dtype}")
    if size is not None and size != c.size:
        raise SoatError(f"export {manifest.folder!r} holds a {c.size}px generator but size={size} was given; "
                        "leave size out")
    if channel_multiplier is not None and channel_multiplier != c.channel_multiplier:
        raise SoatError(f"export {manifest.folder!r} has channel_multiplier {c.channel_multiplier} but "
                        f"{channel_multiplier} was given; leave it out")
